"""Four organizations, one per source in shared/data: private vs centralized vs federated reward models.

    python scripts/bench_federation_orgs.py [--pairs 150] [--dev 100] [--rounds 3] [--max-length 256]
        [--[no-]mean-pool-init]
        [--share lora|full] [--lora-targets attention|all-linear] [--lora-r N] [--learning-rate X]
        [--attacks none label-flip scale100 sign-flip absent] [--attacker ORG] [--robust RULE] [--screen-outliers]
        [--batch-size N] [--local-epochs N] [--models private centralized ...]

Each organization holds one source (hh-rlhf, finegrained-rlhf, llmbar, alpacaeval-ai): natural non-IID
data whose preferences conflict (harmless replies are shorter, the AI judge prefers longer ones). 20% of
each source's prompts are held out as its dev split. All models start from the same MiniLM + LoRA
initialisation (the agreement's seed) and train the same number of passes over their data:

- private:     each organization alone, `--rounds` rounds of local training (a federation of one);
- centralized: one model on the pooled training data of all four (the upper bound federation aims at);
- federated:   the four organizations in `--rounds` signed rounds, FedAvg and a robust rule (`--robust`,
               median by default; `--screen-outliers` leaves out outlier updates before it);
               with --attacks, once per attack with `--attacker` poisoning its contributions
               (scripts/poisoning.py: label-flip, scale100, sign-flip; "none" is the clean run; "absent"
               federates without the attacker: what a rule that shuts it out can reach at best).

Every run goes through the real federation code (signed contributions, verification, aggregation,
manifests) on the in-process grid. Reported per model: pair accuracy on each organization's dev split and
on their union, plus the length bias beside it: how often the model prefers the longer response, and
the accuracy of the "longer wins" rule on the same pairs. alpacaeval-ai is non-commercial: it is read
here for the benchmark and never copied into the project.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from federation.aggregation import STRATEGIES  # noqa: E402
from federation.agreement import (  # noqa: E402
    LORA_TARGET_SETS,
    SHARES,
    TRAINING_SETTINGS,
    Agreement,
    create_settings,
)
from federation.apps import make_client_app, run_federation  # noqa: E402
from federation.codec import Arrays  # noqa: E402
from federation.local_grid import LocalGrid  # noqa: E402
from federation.rounds import FederationState  # noqa: E402
from node.federated import (  # noqa: E402
    NodeParticipant,
    base_model_sha256,
    build_model,
    initial_arrays,
    load_shared,
    scoring_config,
    shared_margins,
)
from node.importing import iter_records  # noqa: E402
from node.rm.artifact import save_reward_model  # noqa: E402
from node.rm.data import PreferencePair, split_by_prompt  # noqa: E402
from node.rm.pipeline import pairs_from_records  # noqa: E402
from protocol.identity import Identity  # noqa: E402
from scripts.poisoning import ATTACKS, SCREENED, participant  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ORGS = {"hh-rlhf": "hh-rlhf/dev-sample.jsonl.gz", "finegrained-rlhf": "finegrained-rlhf/train.jsonl.gz",
        "llmbar": "llmbar/train.jsonl.gz", "alpacaeval-ai": "alpacaeval-ai/train.jsonl.gz"}
DEV_FRACTION = 0.2
MODELS = ("private", "centralized", "fedavg", "robust")


def load_org(data: Path, name: str, n_train: int, n_dev: int, seed: int) -> tuple[list[PreferencePair],
                                                                                   list[PreferencePair]]:
    pairs, _ = pairs_from_records(iter_records(data / ORGS[name], source=name))
    train, dev = split_by_prompt(pairs, DEV_FRACTION, seed)
    rng = random.Random(seed)
    return (rng.sample(train, min(n_train, len(train))), rng.sample(dev, min(n_dev, len(dev))))


def dev_margins(agreement: Agreement, arrays: Arrays, pairs: list[PreferencePair]) -> list[float]:
    """r_chosen - r_rejected of each pair, in order, for the model the shared arrays make."""
    return shared_margins(agreement, arrays, pairs).tolist()


def accuracy_and_bias(pairs: list[PreferencePair], margins: list[float]) -> tuple[float, float]:
    """(accuracy, share of the pairs with a longer side where the model prefers the longer response)."""
    decided = [i for i, p in enumerate(pairs) if len(p.chosen) != len(p.rejected)]
    accuracy = sum(m > 0 for m in margins) / len(margins)
    prefers_longer = sum((margins[i] > 0) == (len(pairs[i].chosen) > len(pairs[i].rejected))
                         for i in decided) / max(1, len(decided))
    return accuracy, prefers_longer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder")
    parser.add_argument("--pairs", type=int, default=150, help="training pairs per organization")
    parser.add_argument("--dev", type=int, default=100, help="dev pairs per organization")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, help="default: federation create's for --share (256)")
    parser.add_argument("--learning-rate", type=float,
                        help="default: federation create's for --share (5e-4 lora, 5e-5 full)")
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--robust", choices=STRATEGIES, default="median", help="the robust rule beside FedAvg")
    parser.add_argument("--screen-outliers", action="store_true",
                        help="the robust run leaves out outlier updates first (federation create --screen-outliers)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-pool-init", action=argparse.BooleanOptionalAction,
                        help="start the reward from the mean of the tokens (federation create "
                             "--mean-pool-init, its default)")
    parser.add_argument("--share", choices=SHARES, default="lora",
                        help="what the models train and share: LoRA adapters + head, or every weight "
                             "(full: use a learning rate near 5e-5)")
    parser.add_argument("--lora-targets", choices=LORA_TARGET_SETS,
                        help="with --share lora: adapters on every linear layer (default) or the query/value "
                             "projections")
    parser.add_argument("--lora-r", type=int, help="LoRA rank (default 16; alpha is twice the rank)")
    parser.add_argument("--batch-size", type=int, help="local batch size (pairs; default 16)")
    parser.add_argument("--local-epochs", type=int, default=1, help="passes over a member's data per round")
    parser.add_argument("--attacks", nargs="+", choices=(*ATTACKS, "absent"), default=["none"],
                        help="federated runs to make: clean (none), with one poisoning member, and/or without it "
                             "(absent)")
    parser.add_argument("--attacker", choices=tuple(ORGS), default="hh-rlhf",
                        help="the organization that poisons its contributions under --attacks")
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="also save every trained model as a reward-model folder under DIR (for eval/export)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="which models to train and compare (default: all)")
    args = parser.parse_args()
    given = {k: getattr(args, k, None) for k in TRAINING_SETTINGS}  # lora_alpha: no flag, twice the rank
    for name, value in create_settings(args.share, given).items():  # what `federation create` writes
        setattr(args, name, value)
    if min(args.pairs, args.dev, args.rounds, args.batch_size, args.local_epochs, args.lora_r) < 1:
        parser.error("--pairs, --dev, --rounds, --batch-size, --local-epochs and --lora-r must be at least 1")
    if args.robust == "fedavg" and not args.screen_outliers and {"fedavg", "robust"} <= set(args.models):
        parser.error("--robust fedavg without --screen-outliers is the FedAvg run itself; pick another rule, "
                     "add --screen-outliers, or drop one of them from --models")
    if args.save is not None and args.save.exists() and (not args.save.is_dir() or any(args.save.iterdir())):
        parser.error(f"--save {args.save}: not an empty folder; name a new one (nothing is overwritten)")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # long texts are truncated by the pair encoder; no warning per text
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model build would bury the results
    orgs = {name: load_org(args.data, name, args.pairs, args.dev, args.seed) for name in ORGS}
    union_dev = [p for _, dev in orgs.values() for p in dev]
    coordinator = Identity.generate()
    keys = {name: Identity.generate() for name in orgs}
    central_key = Identity.generate()

    def agreement(members: list[Identity], strategy: str = "fedavg", screen: bool = False) -> Agreement:
        return Agreement(name="orgs", coordinator=coordinator.public_key_hex,
                         members=tuple(m.public_key_hex for m in members), base_model=args.base_model,
                         base_model_sha256=base_model_sha256(args.base_model), strategy=strategy,
                         rounds=args.rounds, min_participants=len(members), learning_rate=args.learning_rate,
                         max_length=args.max_length, round_timeout_s=36000, seed=args.seed,
                         mean_pool_init=args.mean_pool_init, share=args.share, batch_size=args.batch_size,
                         local_epochs=args.local_epochs, lora_targets=args.lora_targets, lora_r=args.lora_r,
                         lora_alpha=args.lora_alpha, screen_outliers=screen)

    def federate(members: dict[str, tuple[Identity, list[PreferencePair]]], strategy: str,
                 attack: str = "none", screen: bool = False) -> tuple[Agreement, Arrays]:
        a = agreement([k for k, _ in members.values()], strategy, screen)
        participants = [participant(NodeParticipant(None, a, pairs=pairs, identity=k),
                                    attack if name == args.attacker else "none")
                        for name, (k, pairs) in members.items()]
        nodes = {i + 1: (make_client_app(lambda ctx, p=p: p), _context(i + 1)) for i, p in enumerate(participants)}
        grid = LocalGrid(nodes)
        try:
            outcome = run_federation(grid, FederationState(a, coordinator, initial_arrays(a)), node_wait_s=0.0,
                                     finalize=False)
        finally:
            grid.shutdown()
        return a, outcome.final

    def trained(label: str, run: tuple[Agreement, Arrays], seconds: float) -> None:
        runs[label] = run
        print(f"  trained {label} in {seconds:.0f}s", flush=True)
        if args.save is not None:
            a, arrays = run
            model, tokenizer = build_model(a)
            load_shared(model, arrays)
            out = args.save / label.replace(" ", "-")
            save_reward_model(model.eval(), tokenizer, out, {
                "kind": "bench-federation-orgs", "model": label, "agreement": a.to_dict(),
                "scoring": scoring_config(a)})
            print(f"    saved to {out}", flush=True)

    shared = (f"LoRA ({args.lora_targets}, rank {args.lora_r}) + head" if args.share == "lora"
              else "all weights")
    print(f"4 organizations x {args.pairs} training pairs (dev {args.dev} each), {args.rounds} rounds x "
          f"{args.local_epochs} local epoch(s), base {args.base_model}, {shared} trained and shared, lr "
          f"{args.learning_rate:g}, batch {args.batch_size}, max length {args.max_length}, reward starts from "
          f"{'the mean of the tokens' if args.mean_pool_init else '[CLS]'}"
          + ("" if args.attacks == ["none"] else f"; attacks {', '.join(args.attacks)} by {args.attacker}"), flush=True)
    runs: dict[str, tuple[Agreement, Arrays]] = {}
    for name, (train, _) in orgs.items():
        if "private" not in args.models:
            break
        t0 = time.perf_counter()
        trained(f"private {name}", federate({name: (keys[name], train)}, "fedavg"), time.perf_counter() - t0)
    if "centralized" in args.models:
        t0 = time.perf_counter()
        pooled = [p for train, _ in orgs.values() for p in train]
        run = federate({"all": (central_key, random.Random(args.seed).sample(pooled, len(pooled)))}, "fedavg")
        trained("centralized", run, time.perf_counter() - t0)
    rules = {"fedavg": ("fedavg", False), "robust": (args.robust, args.screen_outliers)}
    names = {kind: strategy + (SCREENED if screen else "") for kind, (strategy, screen) in rules.items()}
    for attack in args.attacks:
        for kind, (strategy, screen) in rules.items():
            if kind not in args.models:
                continue
            t0 = time.perf_counter()
            members = {n: (keys[n], train) for n, (train, _) in orgs.items() if attack != "absent" or n != args.attacker}
            run = federate(members, strategy, "none" if attack == "absent" else attack, screen)
            label = f"federated {names[kind]}" + ("" if attack == "none" else f" {attack}")
            trained(label, run, time.perf_counter() - t0)

    sets = {**{name: dev for name, (_, dev) in orgs.items()}, "union": union_dev}
    spans, start = {}, 0  # where each dev split lies in union_dev: every model scores the union once
    for name, (_, dev) in orgs.items():
        spans[name], start = slice(start, start + len(dev)), start + len(dev)
    spans["union"] = slice(0, len(union_dev))
    print("\naccuracy on each organization's dev split (and how often the model prefers the longer response)")
    print(f"{'model':>34} | " + " | ".join(f"{s:>22}" for s in sets))
    union_accuracy: dict[str, float] = {}
    for label, (a, arrays) in runs.items():
        margins = dev_margins(a, arrays, union_dev)
        cells = []
        for name, pairs in sets.items():
            acc, longer = accuracy_and_bias(pairs, margins[spans[name]])
            cells.append(f"{acc:.3f} (longer {longer:.2f})")
        union_accuracy[label] = acc  # the last set is the union
        print(f"{label:>34} | " + " | ".join(f"{c:>22}" for c in cells), flush=True)
    rule = []
    for pairs in sets.values():
        decided = [p for p in pairs if len(p.chosen) != len(p.rejected)]
        rule.append(f"{sum(len(p.chosen) > len(p.rejected) for p in decided) / max(1, len(decided)):.3f}")
    print(f"{'rule: longer wins':>34} | " + " | ".join(f"{c:>22}" for c in rule))
    for attack in (a for a in args.attacks if a != "none"):
        for strategy in names.values():
            clean, hit = union_accuracy.get(f"federated {strategy}"), union_accuracy.get(f"federated {strategy} {attack}")
            if clean is not None and hit is not None:
                what = f"without {args.attacker}" if attack == "absent" else f"{attack} by {args.attacker}"
                print(f"{what}: {strategy} {hit:.3f} on the union, "
                      f"{100 * (hit - clean):+.1f} points against its clean run")


def _context(node_id: int):  # type: ignore[no-untyped-def]
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


if __name__ == "__main__":
    main()
