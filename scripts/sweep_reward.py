"""Reward-model hyperparameter sweep, chosen on an inner validation split, reported on the held-out dev split.

    python scripts/sweep_reward.py [--max-length 256 512] [--lr 2e-5 5e-5 1e-4] [--epochs 1 3]
                                   [--seeds 0] [--train full attention all-linear] [--lora-r 8]
                                   [--mean-pool-init] [--device auto] [--fp32] [--json OUT]
    python scripts/sweep_reward.py --export-pairs pairs.json.gz     # the pairs, for a machine without shared/data
    python scripts/sweep_reward.py --pairs pairs.json.gz --base /path/to/minilm ...

Same data as scripts/bench_reward.py: the permissive human sources in shared/data (hh-rlhf, finegrained-rlhf,
llmbar), 20% of each source's prompts held out as dev. The rest is split again by prompt (20% validation):
every configuration trains on the inner train pairs, keeps its best weights by validation accuracy (rewardnode's
early-stopping selection, one evaluation per epoch) and is then scored on dev. The configuration to pick is the
one with the best mean per-source *validation* accuracy; dev is never used to choose, so its numbers are an
honest estimate. Length bias (how often the model prefers the longer reply) is printed beside accuracy.

A GPU makes the sweep take minutes; `--fp32` turns off bf16 autocast so GPU numbers match CPU training.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import node.rm.evaluate as evaluate_module  # noqa: E402
import node.rm.train as train_module  # noqa: E402
from node.rm.config import TrainConfig  # noqa: E402
from node.rm.data import PreferencePair, split_by_prompt  # noqa: E402
from node.rm.evaluate import EvalReport, evaluate_pairs  # noqa: E402

VAL_FRACTION = 0.2
TRAINED = ("full", "attention", "all-linear")


def export_pairs(path: Path, seed: int) -> None:
    from scripts.bench_reward import DATA, load_pairs

    train, dev = load_pairs(DATA, seed, 0, 0)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump({"train": [asdict(q) for q in train], "dev": [asdict(q) for q in dev]}, f)
    print(f"wrote {len(train)} train / {len(dev)} dev pairs to {path}")


def read_pairs(path: Path | None, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    if path is None:
        from scripts.bench_reward import DATA, load_pairs

        return load_pairs(DATA, seed, 0, 0)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return [PreferencePair(**q) for q in data["train"]], [PreferencePair(**q) for q in data["dev"]]


def balanced(report: EvalReport) -> float:
    """Mean of the per-source accuracies (each source counts the same, whatever its size)."""
    accs = [s.accuracy for s in report.by_source.values() if s.accuracy is not None]
    return sum(accs) / len(accs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export-pairs", type=Path, help="write the train/dev pairs to this .json.gz and exit")
    parser.add_argument("--pairs", type=Path, help="read the pairs from a file written by --export-pairs")
    parser.add_argument("--base", default="minilm", help="backbone: minilm or a local model folder")
    parser.add_argument("--max-length", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--lr", type=float, nargs="+", default=[2e-5, 5e-5, 1e-4])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train", nargs="+", choices=TRAINED, default=["full"],
                        help="what trains: every weight, or LoRA adapters (+ head) on the attention's query/value "
                             "or on every linear layer (train --lora --lora-targets ...)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2 x rank, as the defaults)")
    parser.add_argument("--mean-pool-init", action="store_true", help="start the reward from the mean of the tokens")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA (CPU numbers)")
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args()
    if args.export_pairs:
        export_pairs(args.export_pairs, 0)
        return
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if args.fp32:
        def fp32(device: torch.device) -> Any:
            return evaluate_module.cuda_attention() if device.type == "cuda" else contextlib.nullcontext()

        train_module.forward_context = evaluate_module.forward_context = fp32  # type: ignore[assignment]
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    train, dev = read_pairs(args.pairs, 0)
    inner, val = split_by_prompt(train, VAL_FRACTION, seed=1)
    print(f"# {len(inner)} inner-train / {len(val)} validation / {len(dev)} dev pairs; base {args.base}; "
          f"device {train_module.resolve_device(args.device)}; {'fp32' if args.fp32 else 'autocast'}", flush=True)
    results: list[dict[str, Any]] = []
    for trained, max_length, lr, epochs, seed in itertools.product(args.train, args.max_length, args.lr, args.epochs,
                                                                   args.seeds):
        lora = {} if trained == "full" else {"lora": True, "lora_targets": trained, "lora_r": args.lora_r,
                                             "lora_alpha": 2 * args.lora_r}
        config = TrainConfig(base_model=args.base, max_length=max_length, learning_rate=lr, epochs=epochs,
                             batch_size=args.batch_size, seed=seed, device=args.device, log_every=10**6,
                             mean_pool_init=args.mean_pool_init, **lora)  # type: ignore[arg-type]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = train_module.train_reward_model(inner, val, config, out_dir=tmp, progress=False)
        report = evaluate_pairs(result.model, dev, tokenizer=result.tokenizer, max_length=max_length,
                                batch_size=config.eval_batch_size)
        assert result.dev_report is not None
        row = {"train": trained, "max_length": max_length, "lr": lr, "epochs": epochs, "seed": seed,
               "best_epoch": next((h["epoch"] for h in result.history if h["step"] == result.best_step), None),
               "val_balanced": balanced(result.dev_report), "dev_balanced": balanced(report),
               "dev": {s: m.accuracy for s, m in report.by_source.items()}, "dev_all": report.accuracy,
               "prefers_longer": report.prefers_longer, "seconds": time.perf_counter() - started}
        results.append(row)
        print(f"{trained} len {max_length:4d} lr {lr:.0e} ep {epochs} seed {seed} best@{row['best_epoch']}: "
              f"val {row['val_balanced']:.3f} | dev {row['dev_balanced']:.3f} "
              + " ".join(f"{s} {a:.3f}" for s, a in sorted(row["dev"].items()))
              + f" | prefers longer {report.prefers_longer:.2f} ({row['seconds']:.0f} s)", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    best = max(results, key=lambda r: r["val_balanced"])
    print(f"# chosen on validation: {best['train']} len {best['max_length']} lr {best['lr']:g} epochs "
          f"{best['epochs']} seed {best['seed']}: dev {best['dev']} (balanced {best['dev_balanced']:.3f})")


if __name__ == "__main__":
    main()
