"""Reward-model training benchmark: rewardnode vs TRL's RewardTrainer, same backbone, data and budget.

    python scripts/bench_reward.py [--max-train-pairs N] [--max-dev-pairs N] [--epochs 1] [--max-length 256]
                                   [--batch-size 16] [--threads 2] [--seed 0] [--skip-trl] [--device cpu|cuda]

Backbone all-MiniLM-L6-v2 (the bundled package), fp32 on CPU, for all three runs (`--device cuda`: bf16
autocast with fp32 weights on both sides, TRL's `bf16=True`, which is what each does on a GPU by default):

1. rewardnode: node.rm.train_reward_model with its defaults (lr 5e-5, warmup 5%, length-grouped
   batches, dropout off, no gradient checkpointing, soft labels from the data's agreement).
2. TRL defaults: RewardTrainer with RewardConfig defaults (lr 1e-4, gradient checkpointing on,
   dropout off), `eos_token="[SEP]"`, `bf16=False`, same max_length, batch size, epochs and seed.
3. TRL without gradient checkpointing: the same with gradient_checkpointing=False.

Data: the permissive sources in shared/data (hh-rlhf, finegrained-rlhf, llmbar), read with the
node's importer; 20% of each source's prompts held out (split_by_prompt), then optionally capped.
TRL drops pairs longer than max_length, rewardnode truncates them (middle of the prompt), so TRL is
handed the same pairs already truncated the same way: token ids [CLS] prompt response [SEP] [SEP]
(what TRL builds from prompt + response + eos), with the prompt cut in the middle as rewardnode
cuts it. Nothing is dropped on either side; the counts are printed.

Speed is trained pairs per second of training-loop wall time (dev evaluation excluded on both
sides). Accuracy is on the same dev pairs, each model scored the way it was trained. Targets:
>= 2x TRL defaults and >= 1.3x TRL without checkpointing in pairs/s; accuracy >= TRL on every source.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from node.importing import iter_records  # noqa: E402
from node.rm.config import TrainConfig  # noqa: E402
from node.rm.data import PairEncoder, PreferencePair, split_by_prompt, truncate_pair  # noqa: E402
from node.rm.evaluate import EvalReport, forward_context, report_from_rewards  # noqa: E402
from node.rm.model import load_backbone, resolve_backbone_path  # noqa: E402
from node.rm.pipeline import pairs_from_records  # noqa: E402
from node.rm.train import train_reward_model  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = {"hh-rlhf": "hh-rlhf/dev-sample.jsonl.gz", "finegrained-rlhf": "finegrained-rlhf/train.jsonl.gz",
           "llmbar": "llmbar/train.jsonl.gz"}
DEV_FRACTION = 0.2


def load_pairs(data_dir: Path, seed: int, max_train: int, max_dev: int) -> tuple[list[PreferencePair],
                                                                                   list[PreferencePair]]:
    """(train, dev): 20% of each source's prompts held out; train capped at max_train pairs in total (spread
    over the sources in proportion to their size), dev at max_dev pairs per source (0: no cap)."""
    train: list[PreferencePair] = []
    dev: list[PreferencePair] = []
    for name, rel in SOURCES.items():
        pairs, _ = pairs_from_records(iter_records(data_dir / rel, source=name))
        tr, dv = split_by_prompt(pairs, DEV_FRACTION, seed)
        train += tr
        rng = random.Random(seed)
        dev += rng.sample(dv, max_dev) if max_dev and len(dv) > max_dev else dv
    if max_train and len(train) > max_train:
        train = random.Random(seed).sample(train, max_train)
    return train, dev


# ----------------------------------------------------------------------------------------------
# TRL


def trl_ids(pairs: list[PreferencePair], encoder: PairEncoder) -> tuple[list[list[int]], list[list[int]], int, int]:
    """TRL's sequences [CLS] prompt response [SEP] [SEP], cut like rewardnode's; (chosen, rejected, n_cut, n_over).

    n_cut: pairs shortened to fit; n_over: pairs TRL would have dropped had they not been cut.
    """
    tok = encoder.tokenizer
    head = [tok.cls_token_id] if tok.cls_token_id is not None else []
    tail = [tok.sep_token_id, tok.sep_token_id]  # the eos "[SEP]" TRL appends, then BERT's own [SEP]
    budget = encoder.max_length - len(head) - len(tail)
    prompts = encoder.tokenize([q.prompt for q in pairs])
    sides = []
    n_cut = 0
    n_over = 0
    cut_any = [False] * len(pairs)
    over_any = [False] * len(pairs)
    for texts in ([q.chosen for q in pairs], [q.rejected for q in pairs]):
        out = []
        for i, (p, r) in enumerate(zip(prompts, encoder.tokenize(texts), strict=True)):
            over_any[i] |= len(p) + len(r) > budget
            p2, r2, cut = truncate_pair(p, r, budget=budget, min_prompt_tokens=encoder.min_prompt_tokens,
                                        marker_ids=encoder.marker_ids, head_fraction=encoder.head_fraction)
            cut_any[i] |= cut
            out.append(head + p2 + r2 + tail)
        sides.append(out)
    n_cut, n_over = sum(cut_any), sum(over_any)
    return sides[0], sides[1], n_cut, n_over


def score_ids(model: torch.nn.Module, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Rewards of pre-built sequences (input_ids + attention_mask, as TRL trains), longest first."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = [0.0] * len(ids)
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode(), forward_context(device):
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            t = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), t), pad_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(idx), t), dtype=torch.long)  # (B, T)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            r = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, 0]  # (B,)
            for i, v in zip(idx, r.float().tolist(), strict=True):
                out[i] = v
    return out


def run_trl(train: list[PreferencePair], dev: list[PreferencePair], args: argparse.Namespace, *,
            checkpointing: bool, out_dir: Path) -> dict[str, Any]:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model, tokenizer = load_backbone("minilm")
    encoder = PairEncoder(tokenizer, args.max_length)
    c, r, n_cut, n_over = trl_ids(train, encoder)
    dc, dr, n_cut_dev, _ = trl_ids(dev, encoder)
    dataset = Dataset.from_dict({"chosen_ids": c, "rejected_ids": r})
    config = RewardConfig(
        output_dir=str(out_dir), eos_token="[SEP]", bf16=args.device == "cuda", max_length=args.max_length,
        per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs, seed=args.seed,
        gradient_checkpointing=checkpointing, report_to="none", save_strategy="no", logging_steps=10**6,
        use_cpu=args.device == "cpu", dataloader_num_workers=0, disable_tqdm=True, log_level="error",
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    n_kept = len(trainer.train_dataset)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    pad = tokenizer.pad_token_id
    rewards = score_ids(trainer.model, dc + dr, pad)
    report = report_from_rewards(dev, rewards[: len(dev)], rewards[len(dev):])
    return {"pairs_per_second": n_kept * args.epochs / seconds, "seconds": seconds, "report": report,
            "n_train": n_kept, "dropped": len(train) - n_kept, "truncated_train": n_cut, "truncated_dev": n_cut_dev,
            "would_drop": n_over, "lr": config.learning_rate}


def run_rewardnode(train: list[PreferencePair], dev: list[PreferencePair], args: argparse.Namespace,
                   out_dir: Path) -> dict[str, Any]:
    config = TrainConfig(base_model="minilm", max_length=args.max_length, batch_size=args.batch_size,
                         epochs=args.epochs, seed=args.seed, num_threads=args.threads, device=args.device,
                         log_every=10**6, cpu_workers=args.cpu_workers)
    result = train_reward_model(train, dev, config, out_dir=out_dir, progress=False)
    assert result.dev_report is not None
    return {"pairs_per_second": result.pairs_per_second, "seconds": result.train_seconds,
            "report": result.dev_report, "n_train": result.n_train, "dropped": 0,
            "truncated_train": result.n_truncated_train, "truncated_dev": result.n_truncated_dev,
            "would_drop": None, "lr": config.learning_rate}


def linear_ceiling(train: list[PreferencePair], args: argparse.Namespace) -> dict[str, float]:
    """The most pairs/s the encoder's linear layers allow at this machine's measured fp32 GEMM rate.

    Counts the matmul FLOPs of one trained pair (forward + backward = 3x forward; both sequences at
    their truncated, unpadded lengths; the [CLS]-only last layer computes K and V for every token)
    and times torch's linear layer on a batch-sized input of each shape. Attention, norms, the
    optimizer and padding are left out, so real training must run slower than this.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_backbone_path("minilm"), local_files_only=True)
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    _, tokenizer = load_backbone("minilm")
    c, r, _, _ = trl_ids(train, PairEncoder(tokenizer, args.max_length))
    tokens = sum(len(x) - 1 for x in c + r) / len(train)  # per pair; rewardnode has one [SEP] less than TRL
    macs_per_token = (layers - 1) * (4 * h * h + 2 * h * inner) + 2 * h * h
    flops_per_pair = 3 * 2 * macs_per_token * tokens
    rows = int(2 * args.batch_size * tokens / 2)  # the tokens of one batch
    seconds = 0.0
    for k, n, times in ((h, h, 4), (h, inner, 1), (inner, h, 1)):
        x, w = torch.randn(rows, k), torch.randn(n, k)
        torch.nn.functional.linear(x, w)
        started = time.perf_counter()
        for _ in range(5):
            torch.nn.functional.linear(x, w)
        seconds += times * (time.perf_counter() - started) / 5
    gflops = 2 * rows * (4 * h * h + 2 * h * inner) / seconds / 1e9
    return {"tokens_per_pair": tokens, "gflops": gflops, "pairs_per_second": gflops * 1e9 / flops_per_pair}


def warm_up(args: argparse.Namespace) -> None:
    """Two untimed forward/backward passes at full size, so no run pays the process's first-call costs."""
    model, _ = load_backbone("minilm")
    model.to(args.device)
    ids = torch.randint(1000, 2000, (2 * args.batch_size, args.max_length), device=args.device)  # (2B, T)
    for _ in range(2):
        with forward_context(torch.device(args.device)):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().sum()
        loss.backward()


# ----------------------------------------------------------------------------------------------
# Report


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def print_table(runs: dict[str, dict[str, Any]], sources: list[str]) -> None:
    names = list(runs)
    width = 26
    col = max(14, *(len(n) + 2 for n in names))
    print(f"{'':<{width}}" + "".join(f"{n:>{col}}" for n in names))

    def row(label: str, values: list[str]) -> None:
        print(f"{label:<{width}}" + "".join(f"{v:>{col}}" for v in values))

    base = runs["rewardnode"]
    row("trained pairs/s", [_f(r["pairs_per_second"], 2) for r in runs.values()])
    row("rewardnode speed-up", [_f(base["pairs_per_second"] / r["pairs_per_second"], 2) + "x" for r in runs.values()])
    row("train loop seconds", [_f(r["seconds"], 1) for r in runs.values()])
    row("learning rate", [f"{r['lr']:g}" for r in runs.values()])
    row("train pairs used", [str(r["n_train"]) for r in runs.values()])
    row("train pairs dropped", [str(r["dropped"]) for r in runs.values()])
    row("train pairs truncated", [str(r["truncated_train"]) for r in runs.values()])
    row("dev pairs truncated", [str(r["truncated_dev"]) for r in runs.values()])
    row("TRL would drop (uncut)", [str(r["would_drop"]) if r["would_drop"] is not None else "-" for r in runs.values()])
    reports: list[EvalReport] = [r["report"] for r in runs.values()]
    row("dev accuracy (all)", [f"{_f(rep.accuracy)} n={rep.n}" for rep in reports])
    for s in sources:
        row(f"  {s}", [f"{_f(rep.by_source[s].accuracy) if s in rep.by_source else 'n/a'}" for rep in reports])
    row("dev ECE", [_f(rep.ece) for rep in reports])
    row("model prefers longer", [_f(rep.prefers_longer) for rep in reports])
    row("reward~length spearman", [_f(rep.length_correlation.get("spearman")) for rep in reports])
    print(f"{'longer-wins baseline':<{width}}{_f(reports[0].longer_wins_accuracy):>{col}}  (the data's own "
          "length bias: accuracy of 'the longer response wins' on the dev pairs)")
    for name, r in runs.items():
        if name == "rewardnode":
            continue
        ratio = base["pairs_per_second"] / r["pairs_per_second"]
        worse = [s for s in sources if s in r["report"].by_source and s in base["report"].by_source
                 and (base["report"].by_source[s].accuracy or 0) < (r["report"].by_source[s].accuracy or 0)]
        print(f"vs {name}: {ratio:.2f}x pairs/s; accuracy below it on: {', '.join(worse) or 'no source'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder")
    parser.add_argument("--max-train-pairs", type=int, default=0, help="cap on training pairs (0: all)")
    parser.add_argument("--max-dev-pairs", type=int, default=0, help="cap on dev pairs per source (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-trl", action="store_true", help="time rewardnode alone")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: both train under bf16 autocast on the GPU (--threads still sets CPU "
                             "threads)")
    parser.add_argument("--cpu-workers", type=int, default=0, help="rewardnode's pieces per batch (rm.cpu_workers; "
                        "0: automatic, 1: one multi-threaded pass)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here; run on a GPU machine or leave --device cpu")

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    train, dev = load_pairs(args.data, args.seed, args.max_train_pairs, args.max_dev_pairs)
    sources = sorted({q.source for q in train + dev})
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for q in train:
        counts[q.source][0] += 1
    for q in dev:
        counts[q.source][1] += 1
    print(f"# bench_reward: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), backbone {resolve_backbone_path('minilm')}")
    precision = "fp32 on CPU" if args.device == "cpu" else f"bf16 autocast on {torch.cuda.get_device_name()}"
    print(f"# {len(train)} train / {len(dev)} dev pairs ({', '.join(f'{s} {a}/{b}' for s, (a, b) in counts.items())}); "
          f"epochs {args.epochs}, max length {args.max_length}, batch {args.batch_size}, "
          f"{precision}, seed {args.seed}")
    if args.max_train_pairs or args.max_dev_pairs:
        print("# REDUCED RUN: capped with --max-train-pairs / --max-dev-pairs; not the full-data numbers")
    runs: dict[str, dict[str, Any]] = {}
    warm_up(args)
    with tempfile.TemporaryDirectory(prefix="bench-reward-") as tmp:
        runs["rewardnode"] = run_rewardnode(train, dev, args, Path(tmp) / "rn")
        print(f"# rewardnode done: {runs['rewardnode']['pairs_per_second']:.2f} pairs/s", file=sys.stderr, flush=True)
        if not args.skip_trl:
            for name, ckpt in (("TRL defaults", True), ("TRL no-ckpt", False)):
                runs[name] = run_trl(train, dev, args, checkpointing=ckpt, out_dir=Path(tmp) / name.replace(" ", "-"))
                print(f"# {name} done: {runs[name]['pairs_per_second']:.2f} pairs/s", file=sys.stderr, flush=True)
    print_table(runs, sources)
    if args.device != "cpu":
        return
    ceiling = linear_ceiling(train, args)
    print(f"ceiling: {ceiling['tokens_per_pair']:.0f} tokens per trained pair; torch fp32 linear layers of the encoder's "
          f"shapes run at {ceiling['gflops']:.0f} GFLOP/s on {args.threads} thread(s) here, so their matmuls alone "
          f"(forward + backward) cap training at {ceiling['pairs_per_second']:.2f} pairs/s")
    for name, r in runs.items():
        if name != "rewardnode":
            print(f"  2x {name} would need {2 * r['pairs_per_second']:.2f} pairs/s "
                  f"({2 * r['pairs_per_second'] / ceiling['pairs_per_second']:.0%} of that ceiling)")


if __name__ == "__main__":
    main()
