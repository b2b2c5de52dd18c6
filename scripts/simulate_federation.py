"""Simulate a federation of N members on one machine, on the real ServerApp/ClientApp code.

    python scripts/simulate_federation.py --nodes 10 [--rounds 3] [--strategy median] [--engine ray|local]

--engine ray uses Flower's Simulation Runtime (`flwr.simulation.run_simulation`, needs
`pip install -e .[simulation]`, i.e. Ray); --engine local uses federation/local_grid.py (threads, no
Ray). Member i is virtual SuperNode partition i: its identity comes from a fixed seed, its pairs
are synthetic (tests/federation/conftest.py) and never leave it; only signed updates do. Prints
per-round accepted contributions, round time, and the final model's dev accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COORDINATOR_SEED = bytes([255]) * 32


def member_identity(i: int) -> Any:
    from protocol.identity import Identity

    return Identity.from_seed(i.to_bytes(4, "big") * 8)


def make_agreement(base: str, n: int, rounds: int, strategy: str) -> Any:
    from federation.agreement import Agreement
    from node.federated import base_model_sha256
    from protocol.identity import Identity

    return Agreement(name="sim", coordinator=Identity.from_seed(COORDINATOR_SEED).public_key_hex,
                     members=tuple(member_identity(i).public_key_hex for i in range(n)), base_model=base,
                     base_model_sha256=base_model_sha256(base), strategy=strategy, rounds=rounds,
                     min_participants=max(1, (2 * n) // 3), learning_rate=0.01, max_length=32, round_timeout_s=600)


def participant(agreement: Any, i: int, pairs: int) -> Any:
    from node.federated import NodeParticipant
    from node.rm.data import PreferencePair
    from tests.federation.conftest import secret_pairs

    data = [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in secret_pairs(pairs, i, f"sim{i}")]
    return NodeParticipant(None, agreement, pairs=data, identity=member_identity(i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--strategy", default="median")
    parser.add_argument("--engine", choices=("ray", "local"), default="ray")
    parser.add_argument("--base-model", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from federation.apps import make_client_app, make_server_app, run_federation
    from federation.rounds import FederationState
    from node.federated import initial_arrays
    from protocol.identity import Identity
    from tests.federation.conftest import build_tiny_bert

    tmp = tempfile.TemporaryDirectory()
    base = args.base_model or str(build_tiny_bert(Path(tmp.name)))
    agreement = make_agreement(base, args.nodes, args.rounds, args.strategy)
    init = initial_arrays(agreement)
    cache: dict[int, Any] = {}

    def participant_for(context: Any) -> Any:
        i = int(context.node_config.get("partition-id", context.node_id - 1))
        if i not in cache:
            cache[i] = participant(agreement, i, args.pairs)
        return cache[i]

    def state_for(_context: Any) -> FederationState:
        return FederationState(agreement, Identity.from_seed(COORDINATOR_SEED), init)

    def report(outcome: Any) -> None:
        for r, secs in zip(outcome.rounds, outcome.round_seconds, strict=True):
            print(f"round {r.round}: {len(r.accepted)} accepted, {len(r.rejected)} rejected, {secs:.2f}s", flush=True)
        print(f"{len(outcome.chain)} signed manifests in the chain")

    t0 = time.perf_counter()
    if args.engine == "ray":
        from flwr.simulation import run_simulation

        client_app = make_client_app(participant_for)
        server_app = make_server_app(state_for, on_done=report, finalize=False)
        run_simulation(server_app, client_app, num_supernodes=args.nodes,
                       backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}})
    else:
        from flwr.app import Context, RecordDict

        from federation.local_grid import LocalGrid

        nodes = {i + 1: (make_client_app(participant_for),
                         Context(run_id=1, node_id=i + 1, node_config={"partition-id": i}, state=RecordDict(),
                                 run_config={})) for i in range(args.nodes)}
        grid = LocalGrid(nodes)
        outcome = run_federation(grid, state_for(None), node_wait_s=0.0, finalize=False)
        grid.shutdown()
        report(outcome)
    print(f"{args.nodes} members, {args.rounds} rounds, {args.strategy}, engine {args.engine}: "
          f"{time.perf_counter() - t0:.1f}s wall")


if __name__ == "__main__":
    main()
