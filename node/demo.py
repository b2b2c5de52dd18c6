"""`make demo`: one node imports the bundled real samples, aggregates them and prints a summary.

The bundled samples carry one label per pair, which says nothing about agreement. To show the
multi-labeler side (alpha, reliability, the ambiguity queue) the demo also has five *simulated*
labelers re-label 200 hh-rlhf pairs, each agreeing with the original crowdworker at a stated rate;
they are named `sim-*` and imported as their own source, `hh-rlhf-relabel`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from node.cli import main as cli

SAMPLES = Path(__file__).parent / "samples"
SOURCES = {
    "hh-rlhf": SAMPLES / "hh-rlhf" / "dev-sample.jsonl.gz",
    "finegrained-rlhf": SAMPLES / "finegrained-rlhf" / "train.jsonl.gz",
    "llmbar": SAMPLES / "llmbar" / "train.jsonl.gz",
}
# name -> probability of agreeing with the original label (a 0.5 labeler is a coin flipper)
SIMULATED_LABELERS = {"sim-careful": 0.92, "sim-good": 0.85, "sim-ok": 0.75, "sim-hasty": 0.62, "sim-spammer": 0.5}


def simulated_relabel(path: Path, out: Path, *, n_pairs: int, seed: int) -> int:
    """Write `multi` records in which the simulated labelers re-label the first `n_pairs` pairs."""
    rng = random.Random(seed)
    written = 0
    with gzip.open(path, "rt", encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            if written == n_pairs:
                break
            pair = json.loads(line)
            votes = []
            for name, accuracy in SIMULATED_LABELERS.items():
                u = rng.random()
                outcome = "A" if u < accuracy else ("tie" if u < accuracy + (1 - accuracy) * 0.2 else "B")
                # The side shown first is randomized, as on the labeling page.
                if rng.random() < 0.5:
                    votes.append({"annotator": name, "a": 0, "b": 1, "outcome": outcome})
                else:
                    flipped = {"A": "B", "B": "A"}.get(outcome, outcome)
                    votes.append({"annotator": name, "a": 1, "b": 0, "outcome": flipped})
            record = {"prompt": pair["prompt"], "responses": [pair["chosen"], pair["rejected"]], "votes": votes}
            dst.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    return written


def run(demo_dir: Path, *, quick: bool) -> int:
    home = demo_dir / "org-a"
    started = time.perf_counter()

    def step(title: str, *argv: str) -> None:
        print(f"\n$ rewardnode {' '.join(argv)}    # {title}", flush=True)
        code = cli([*argv, "--home", str(home)])
        if code != 0:
            raise SystemExit(f"demo step failed ({title}); see the error above")

    step("create the node", "init", "--name", "org-a")
    for name, path in SOURCES.items():
        step(f"import real {name} pairs", "import", str(path), "--source", name)
    relabel = demo_dir / "hh-rlhf-relabel.jsonl"
    n = simulated_relabel(SOURCES["hh-rlhf"], relabel, n_pairs=60 if quick else 200, seed=0)
    print(f"\n(wrote {n} pairs re-labeled by {len(SIMULATED_LABELERS)} simulated labelers to {relabel})")
    step("import the multi-labeler votes", "import", str(relabel), "--source", "hh-rlhf-relabel", "--format", "multi")
    step("import the same file again: nothing is added", "import", str(relabel), "--source", "hh-rlhf-relabel")
    step("counts per source", "stats")
    step("aggregate: Bradley-Terry, alpha, reliability, ambiguity queue", "aggregate", "--top", "5")
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; the node home is kept at {home}")
    print(f"inspect it with: rewardnode --home {home} stats")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.demo", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller run (used by the smoke test)")
    parser.add_argument("--dir", help="demo folder (default: $REWARDNODE_DEMO_DIR or a new temporary folder)")
    args = parser.parse_args(argv)
    root = args.dir or os.environ.get("REWARDNODE_DEMO_DIR") or tempfile.mkdtemp(prefix="rewardnode-demo-")
    demo_dir = Path(root)
    demo_dir.mkdir(parents=True, exist_ok=True)
    if (demo_dir / "org-a").exists():
        print(f"{demo_dir / 'org-a'} exists from an earlier demo; choose an empty REWARDNODE_DEMO_DIR", file=sys.stderr)
        return 2
    return run(demo_dir, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
