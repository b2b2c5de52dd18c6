"""Poisoning benchmark: 1 of N members attacks; robust rules vs FedAvg, on the real federation code.

    python scripts/bench_federation.py [--nodes 4] [--rounds 3] [--pairs 48] [--base-model DIR|minilm]
        [--strategies fedavg,median,...,fedavg+screen]

Every run goes through federation/apps.py (ServerApp loop, ClientApp handlers, signed contributions,
verification, aggregation, signed manifests) on the in-process LocalGrid. Member 0 attacks (label-flip,
scale100 or sign-flip: scripts/poisoning.py). A rule named RULE+screen runs with the agreement's
screen_outliers on (outlier updates left out, then RULE). bench_federation_orgs.py --attacks runs the
same attacks on the four organizations' real data.

--deployment N measures instead the round overhead of Flower's deployment engine: a TLS SuperLink
(SuperNode authentication on) and N admitted SuperNodes on 127.0.0.1 (one node home each, created in a temp folder with the CLI), 3 rounds,
`rewardnode federation run` on every side, timings read from the coordinator's outcome.json.

Reported: dev pair accuracy of the final global model on held-out pairs (higher is better) and,
per run, the in-process round overhead (round time minus the slowest member's training time).
Without --base-model a tiny BERT is built in a temp folder (seconds); numbers are then about the
aggregation rules, not about reward-model quality.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from federation.aggregation import STRATEGIES  # noqa: E402
from federation.agreement import Agreement  # noqa: E402
from federation.apps import make_client_app, run_federation  # noqa: E402
from federation.codec import Arrays  # noqa: E402
from federation.local_grid import LocalGrid  # noqa: E402
from federation.rounds import FederationState  # noqa: E402
from node.federated import NodeParticipant, base_model_sha256, initial_arrays, shared_margins  # noqa: E402
from node.rm.data import PreferencePair  # noqa: E402
from protocol.identity import Identity  # noqa: E402
from scripts.poisoning import ATTACKS, SCREENED, participant  # noqa: E402

RULES = (*STRATEGIES, "fedavg" + SCREENED)


def accuracy(agreement: Agreement, arrays: Arrays, pairs: list[PreferencePair]) -> float:
    return float((shared_margins(agreement, arrays, pairs) > 0).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=48, help="pairs per member")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--strategies", default=",".join(RULES),
                        help=f"comma-separated rules; any of {', '.join(STRATEGIES)}, each optionally with {SCREENED}")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--deployment", type=int, default=0, metavar="N",
                        help="measure the deployment engine's round overhead with N members instead")
    args = parser.parse_args()
    unknown = [r for r in args.strategies.split(",") if r.removesuffix(SCREENED) not in STRATEGIES]
    if unknown:
        parser.error(f"--strategies: unknown rule(s) {', '.join(unknown)}; use {', '.join(STRATEGIES)}, "
                     f"each optionally with {SCREENED}")
    torch.set_num_threads(1)
    logging.getLogger("federation").setLevel(logging.ERROR)  # rejected/left-out updates are expected here
    if args.deployment:
        deployment_overhead(args.deployment, args.rounds)
        return
    from tests.federation.conftest import build_tiny_bert, secret_pairs

    tmp = tempfile.TemporaryDirectory()
    base = args.base_model or str(build_tiny_bert(Path(tmp.name)))
    coordinator = Identity.generate()
    members = [Identity.generate() for _ in range(args.nodes)]

    def pairs_of(seed: int, n: int) -> list[PreferencePair]:
        return [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in secret_pairs(n, seed, f"n{seed}")]

    def agreement(rule: str) -> Agreement:
        return Agreement(name="bench", coordinator=coordinator.public_key_hex,
                         members=tuple(m.public_key_hex for m in members), base_model=base,
                         base_model_sha256=base_model_sha256(base), strategy=rule.removesuffix(SCREENED),
                         screen_outliers=rule.endswith(SCREENED), rounds=args.rounds,
                         min_participants=args.nodes - 1, learning_rate=0.01, max_length=32, n_byzantine=1,
                         trim_fraction=0.25, round_timeout_s=600)

    first = agreement("fedavg")
    honest = [NodeParticipant(None, first, pairs=pairs_of(i, args.pairs), identity=m) for i, m in enumerate(members)]
    dev = pairs_of(1000, 200)
    init = initial_arrays(first)
    print(f"{args.nodes} members x {args.pairs} pairs, {args.rounds} rounds, base {Path(base).name}; "
          f"dev accuracy of the initial model {accuracy(first, init, dev):.3f}")
    print(f"{'attack':>11} | " + " | ".join(f"{s:>14}" for s in args.strategies.split(",")))
    overheads: list[float] = []
    for attack in args.attacks.split(","):
        row = []
        for strategy in args.strategies.split(","):
            a = agreement(strategy)
            for p in honest:
                p.agreement = a
            participants = [participant(honest[0], attack), *honest[1:]]
            nodes = {i + 1: (make_client_app(lambda ctx, p=p: p), _context(i + 1)) for i, p in enumerate(participants)}
            grid = LocalGrid(nodes)
            t0 = time.perf_counter()
            outcome = run_federation(grid, FederationState(a, coordinator, init), node_wait_s=0.0, finalize=False)
            grid.shutdown()
            overheads += [r - t for r, t in zip(outcome.round_seconds, outcome.train_seconds, strict=True)]
            row.append(f"{accuracy(a, outcome.final, dev):.3f} ({time.perf_counter() - t0:4.1f}s)")
        print(f"{attack:>11} | " + " | ".join(f"{c:>14}" for c in row), flush=True)
    print(f"in-process round overhead (round - slowest member's training): median "
          f"{statistics.median(overheads) * 1000:.0f} ms, max {max(overheads) * 1000:.0f} ms over {len(overheads)} rounds")
    print(f"update size per member: {sum(v.size for v in init.values())} float32 "
          f"({sum(v.size for v in init.values()) * 4 / 1024:.1f} KiB)")


def deployment_overhead(n: int, rounds: int) -> None:
    import json
    import subprocess

    from federation.deployment import free_port, wait_for_port
    from node.cli import main as cli
    from tests.federation.conftest import build_tiny_bert, secret_pairs

    root = Path(tempfile.mkdtemp(prefix="bench-fed-"))
    bert = build_tiny_bert(root / "bert")
    port = free_port()
    keys, homes = [], []
    coord = root / "coord"
    cli(["--home", str(coord), "init", "--name", "coord"])
    for i in range(n):
        home = root / f"org{i}"
        cli(["--home", str(home), "init", "--name", f"org{i}"])
        data = home / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in secret_pairs(32, i, f"t{i}")))
        cli(["--home", str(home), "import", str(data)])
        keys.append(Identity.load(home / "identity.key").public_key_hex)
        homes.append(home)
    create = ["--home", str(coord), "federation", "create", "fed", "--base-model", str(bert), "--rounds",
              str(rounds), "--max-length", "32"]
    cli(create + [x for k in keys for x in ("--member", k)])
    fed = coord / "federation" / "fed"
    for home in homes:
        cli(["--home", str(home), "federation", "join", "fed", "--coordinator", f"127.0.0.1:{port}", "--agreement",
             str(fed / "agreement.json"), "--ca", str(fed / "tls" / "ca.pem")])
    cli(["--home", str(coord), "federation", "admit", "fed",
         *(str(h / "federation" / "fed" / "supernode-key.json") for h in homes)])
    run = [sys.executable, "-m", "node.cli"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(run + ["--home", str(coord), "federation", "run", "fed", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wait_for_port(port, 120)
    procs += [subprocess.Popen(run + ["--home", str(h), "federation", "run", "fed"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for h in homes]
    codes = [p.wait(900) for p in procs]
    wall = time.perf_counter() - t0
    outcome = json.loads((fed / "rounds" / "outcome.json").read_text())
    rs, ts, cs = outcome["round_seconds"], outcome["train_seconds"], outcome["crypto_seconds"]
    print(f"deployment engine, TLS, {n} members on 127.0.0.1, exit codes {codes}, {wall:.1f}s wall end to end")
    for i, (r, t, c) in enumerate(zip(rs, ts, cs, strict=True), start=1):
        print(f"  round {i}: {r:.2f}s, slowest member trained {t:.3f}s -> overhead {r - t:.2f}s; signing + "
              f"verification + aggregation {c * 1000:.1f} ms = {100 * c / r:.2f}% of the round")
    print(f"  (files under {root})")


def _context(node_id: int):  # type: ignore[no-untyped-def]
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


if __name__ == "__main__":
    main()
