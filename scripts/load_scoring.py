"""Load test of POST /v1/score: micro-batching on vs off, against a real reward model over real HTTP.

    python scripts/load_scoring.py [--model DIR] [--clients 16] [--requests 8] [--items 1] [--threads 1]

Without --model it serves all-MiniLM-L6-v2 (the bundled backbone) with an untrained one-output head:
throughput does not depend on the head's weights. Each of --clients concurrent clients sends
--requests requests of --items items, one after another. Printed per setting: items/s, request
latency p50/p95, and scorer calls; the last line is the ratio of batched to unbatched throughput,
measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import torch  # noqa: E402
from aiohttp import web  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from node.http import ApiToken, Role, ScorerRegistry, ServerConfig, create_app  # noqa: E402
from node.http.scoring import SCORING_KEY  # noqa: E402

TOKEN = "load-test-token-0123456789"
WORDS = "the a is of to and what how why please help me tell about answer question reward model".split()


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def minilm_artifact(out: Path) -> Path:
    from node.rm.artifact import save_reward_model
    from node.rm.model import load_backbone

    torch.manual_seed(0)
    model, tokenizer = load_backbone("minilm")
    save_reward_model(model, tokenizer, out, {"scoring": {"max_length": 128}})
    return out


async def run_load(model: Path, *, batched: bool, clients: int, requests: int, items: int) -> dict[str, float]:
    config = ServerConfig(
        tokens=(ApiToken.from_secret(TOKEN, Role.SCORER, "load"),), port=0,
        batch_window_ms=5.0 if batched else 0.0, max_batch=64 if batched else 1,
    )
    app = create_app(config, scorers=ScorerRegistry.from_artifacts({"rm": model}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/v1/score"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    rng = random.Random(0)
    bodies = [{"items": [{"prompt": text(rng, 20), "response": text(rng, 40)} for _ in range(items)]}
              for _ in range(clients * requests)]
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
            async with session.post(url, json=bodies[0], headers=headers) as resp:  # warm-up: loads the model
                assert resp.status == 200, await resp.text()
            app[SCORING_KEY].batchers["rm"].batches = 0

            async def client(k: int) -> None:
                for j in range(requests):
                    start = time.perf_counter()
                    async with session.post(url, json=bodies[k * requests + j], headers=headers) as resp:
                        assert resp.status == 200, await resp.text()
                        await resp.read()
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            await asyncio.gather(*(client(k) for k in range(clients)))
            elapsed = time.perf_counter() - start
            calls = app[SCORING_KEY].batchers["rm"].batches
    finally:
        await runner.cleanup()
    latencies.sort()
    return {"items_per_s": clients * requests * items / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))], "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a save_reward_model folder (default: MiniLM, untrained head)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--items", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or minilm_artifact(Path(tmp) / "rm")
        results = {}
        for batched in (False, True):
            r = asyncio.run(run_load(model, batched=batched, clients=args.clients, requests=args.requests,
                                     items=args.items))
            results[batched] = r
            name = "micro-batched (5 ms, max 64)" if batched else "one request per call"
            print(f"{name:30s} {r['items_per_s']:8.1f} items/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms"
                  f"  scorer calls {int(r['calls'])}")
    ratio = results[True]["items_per_s"] / results[False]["items_per_s"]
    print(f"throughput ratio batched/unbatched: {ratio:.2f}x ({args.clients} clients x {args.requests} requests x "
          f"{args.items} items, {args.threads} torch thread(s))")


if __name__ == "__main__":
    main()
