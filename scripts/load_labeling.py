"""Load test of the labeling ingestion API: N concurrent labelers submit labels for S seconds.

    python scripts/load_labeling.py [--labelers 50] [--seconds 60] [--retry-rate 0.05] [--page-rate 0.1]

The server (labeling feature, SQLite store in a temp folder) runs in a child process on 127.0.0.1;
the labelers run in this process, each with its own labeler token. A labeler sends one label at a
time (closed loop; --think-ms adds a pause between labels): a POST /v1/comparisons with a fresh idempotency key, sometimes
(--retry-rate) sent twice as a client retry would, and sometimes (--page-rate) a full labeling-page
round trip (GET /label/C, POST the form) instead. At the end it prints errors, p50/p99 latency and
throughput, then opens the store and checks that every acknowledged label is stored exactly once.
Exit status 1 when any request failed or any label is missing or duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

HOST = "127.0.0.1"  # this script never talks to anything else
MAX_LABELERS = 500
MAX_SECONDS = 600
CAMPAIGN = "load"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _serve(url: str, port: int) -> None:
    """The child process: the app with the labeling feature, until terminated."""
    import logging

    from aiohttp import web

    from node.http import ServerConfig, create_app
    from node.labeling import labeling_feature
    from storage.store import Store

    logging.basicConfig(level=logging.WARNING)
    app = create_app(ServerConfig(host=HOST, port=port), features=[labeling_feature(Store.open(url))])
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def _setup(url: str, labelers: int) -> list[str]:
    """A store with a campaign of 200 pairs and one labeler token each; the tokens."""
    from node.labeling.service import new_secret, sha256_hex
    from storage.records import Comparison
    from storage.store import Store

    with Store.open(url) as store:
        store.import_records([Comparison("seed", f"question {i}", f"answer {i} one", f"answer {i} two", "A")
                              for i in range(200)])
        store.create_campaign(CAMPAIGN, sources=["seed"], overlap=3)
        tokens = []
        for i in range(labelers):
            secret = new_secret()
            store.add_token(sha256_hex(secret), kind="api", role="labeler", name=f"labeler-{i:03d}")
            tokens.append(secret)
    return tokens


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.acked: set[str] = set()
        self.page_labels = 0


async def _labeler(i: int, token: str, base: str, deadline: float, args: argparse.Namespace, tally: Tally) -> None:
    rng = random.Random(i)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=base, headers=headers) as http:
        n = 0
        page_done = False
        while time.monotonic() < deadline:
            if args.think_ms:
                await asyncio.sleep(rng.uniform(0, 2 * args.think_ms) / 1000)
            n += 1
            if not page_done and rng.random() < args.page_rate:
                t0 = time.perf_counter()
                try:
                    async with http.get(f"/label/{CAMPAIGN}") as resp:
                        html = await resp.text()
                    pair = re.search(r"name=pair_id value='(\d+)'", html)
                    left = re.search(r"name=left value='([0-9a-f]{64})'", html)
                    if pair is None or left is None:
                        page_done = True
                        continue
                    async with http.post(f"/label/{CAMPAIGN}", allow_redirects=False, data={
                            "pair_id": pair.group(1), "left": left.group(1), "choice": rng.choice("AB")}) as resp:
                        if resp.status != 303:
                            tally.errors[f"page {resp.status}"] += 1
                        else:
                            tally.page_labels += 1
                except aiohttp.ClientError as e:
                    tally.errors[type(e).__name__] += 1
                tally.latencies.append(time.perf_counter() - t0)
                continue
            key = f"l{i}-{n}"
            body = {"prompt": f"load prompt {rng.randrange(1000)}", "response_a": f"a {rng.random()}",
                    "response_b": f"b {rng.random()}", "outcome": rng.choice(["A", "B", "tie", "both_bad"]),
                    "source": "load", "idempotency_key": key}
            for _ in range(2 if rng.random() < args.retry_rate else 1):
                t0 = time.perf_counter()
                try:
                    async with http.post("/v1/comparisons", json=body) as resp:
                        await resp.read()
                        if resp.status == 200:
                            tally.acked.add(key)
                        else:
                            tally.errors[f"http {resp.status}"] += 1
                except aiohttp.ClientError as e:
                    tally.errors[type(e).__name__] += 1
                tally.latencies.append(time.perf_counter() - t0)


async def _run(base: str, tokens: list[str], args: argparse.Namespace) -> tuple[Tally, float]:
    tally = Tally()
    start = time.monotonic()
    deadline = start + args.seconds
    await asyncio.gather(*(_labeler(i, t, base, deadline, args, tally) for i, t in enumerate(tokens)))
    return tally, time.monotonic() - start


async def _wait_up(base: str) -> None:
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    raise SystemExit("the server did not start within 10 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelers", type=int, default=50, help=f"concurrent labelers (1..{MAX_LABELERS})")
    parser.add_argument("--seconds", type=float, default=60.0, help=f"duration (1..{MAX_SECONDS})")
    parser.add_argument("--retry-rate", type=float, default=0.05, help="share of labels sent twice (a retry)")
    parser.add_argument("--think-ms", type=float, default=0.0, help="mean pause between a labeler's labels "
                        "(0: closed loop at full speed, which measures saturation, not a labeler's wait)")
    parser.add_argument("--page-rate", type=float, default=0.1, help="share of labels given through the page")
    args = parser.parse_args()
    if not 1 <= args.labelers <= MAX_LABELERS or not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--labelers must be 1..{MAX_LABELERS} and --seconds 1..{MAX_SECONDS}")
    with tempfile.TemporaryDirectory(prefix="rewardnode-load-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'store.db'}"
        tokens = _setup(url, args.labelers)
        port = _free_port()
        base = f"http://{HOST}:{port}"
        server = multiprocessing.get_context("spawn").Process(target=_serve, args=(url, port), daemon=True)
        server.start()
        try:
            asyncio.run(_wait_up(base))
            tally, elapsed = asyncio.run(_run(base, tokens, args))
        finally:
            server.terminate()
            server.join(10)
        from sqlalchemy import select

        from storage import models as m
        from storage.store import Store

        keys, labels, sources = (m.table_of(t) for t in (m.ApiIdempotencyKey, m.Comparison, m.Source))
        with Store.open(url) as store, store.engine.connect() as conn:
            # the API keeps a caller's key as "<role>:<name>/<key>", with the content key of its record
            rows = conn.execute(select(keys.c.key, keys.c.content_key))
            named = {str(k).split("/", 1)[-1]: ck for k, ck in rows}
            load = select(labels.c.key).join(sources).where(sources.c.name == "load")
            stored = Counter(conn.execute(load).scalars())
            page_rows = len(store.campaign_labels(CAMPAIGN))
    lat = sorted(tally.latencies)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
    missing = [k for k in tally.acked if stored.get(named.get(k, ""), 0) == 0]
    duplicated = [ck for ck, n in stored.items() if n > 1]  # one record per content key: a broken store only
    acked_content = {named[k] for k in tally.acked if k in named}
    unacked_stored = [ck for ck in stored if ck not in acked_content]
    print(f"{args.labelers} labelers x {elapsed:.1f} s: {len(lat):,} requests ({len(lat) / elapsed:,.0f}/s), "
          f"{len(tally.acked):,} API labels acknowledged, {tally.page_labels:,} page labels")
    print(f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat[-1] * 1000 if lat else float('nan'):.1f} ms")
    print(f"errors: {sum(tally.errors.values())} {dict(tally.errors) or ''}")
    print(f"stored exactly once: {len(tally.acked) - len(missing):,}/{len(tally.acked):,} acknowledged; "
          f"missing {len(missing)}, duplicated {len(duplicated)}, stored but unacknowledged {len(unacked_stored)}; "
          f"page labels stored {page_rows}/{tally.page_labels}")
    ok = not tally.errors and not missing and not duplicated and page_rows == tally.page_labels
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
