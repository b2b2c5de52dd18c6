"""Reward-model commands: train, models, eval, score, export, serve."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.app import Node
from node.errors import NodeError, UsageError

if TYPE_CHECKING:
    from node.importing import Reject
    from node.rm.data import PreferencePair
    from storage.types import ModelEntry

IMPORT_FORMATS = ("auto", "trl", "hh", "conversational", "multi", "ratings", "feedback")
EXPORT_FORMATS = ("hf", "onnx", "onnx-int8")
EVAL_BATCH_PAIRS = 32
"""Pairs per forward pass in `eval` (evaluate_pairs' default)."""
INT8_SCHEMES = ("auto", "dynamic", "weights")  # node.rm.export.INT8_SCHEMES, without importing torch
MIN_AGREEMENT = 0.995  # export_onnx's default min_agreement, likewise
LORA_TARGET_CHOICES = ("attention", "all-linear")  # node.rm.model.LORA_TARGET_SETS, likewise
THREADS_HELP = "torch CPU threads (default, or 0: torch's default)"

COMMANDS = {
    "train": "train the node's private reward model on a snapshot of the store and register it",
    "models": "list the registered reward models",
    "eval": "evaluate a reward model on a preference file: accuracy per source, calibration, length bias",
    "score": "score one (prompt, response) with a reward model",
    "export": "export a reward model as a Hugging Face folder or ONNX (fp32 / int8, fidelity-gated)",
    "serve": "serve the reward model over HTTP (/v1/score, /v1/compare) with the node's other HTTP features",
}


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "train":
        parser.add_argument("--base", metavar="minilm|PATH", help="backbone: the bundled all-MiniLM-L6-v2 (minilm, "
                            "the default) or a local Hugging Face model folder")
        parser.add_argument("--source", metavar="NAME", action="append", help="train on these sources only "
                            "(repeatable; default: all)")
        parser.add_argument("--snapshot", metavar="ID", help="train on this stored snapshot (id or unique prefix); "
                            "default: a new snapshot of everything stored now")
        parser.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters + the head")
        parser.add_argument("--lora-targets", choices=LORA_TARGET_CHOICES,
                            help="with --lora: adapt the attention's query/value (default) or every linear layer")
        parser.add_argument("--mean-pool-init", action="store_true", default=None,
                            help="start the reward from the mean of the tokens, not the pretrained [CLS] vector")
        parser.add_argument("--epochs", type=int, metavar="N")
        parser.add_argument("--max-length", type=int, metavar="N", help="tokens per (prompt, response); longer "
                            "ones are truncated (middle of the prompt cut), never dropped")
        parser.add_argument("--batch-size", type=int, metavar="N", help="pairs per optimizer step")
        parser.add_argument("--lr", type=float, metavar="X", help="peak learning rate (default 5e-5)")
        parser.add_argument("--seed", type=int, metavar="N", help="seeds initialization, batch order and dev split")
        parser.add_argument("--dev-fraction", type=float, metavar="X", help="share of prompts held out (default 0.1)")
        parser.add_argument("--patience", type=int, metavar="N", help="early stopping: dev evaluations without "
                            "improvement before stopping (0: never)")
        parser.add_argument("--eval-every", type=int, metavar="N", help="evaluate the dev set every N steps "
                            "(default: every epoch)")
        parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its "
                            "last epoch checkpoint: give the settings it was started with; without "
                            "--snapshot, the snapshot of the newest interrupted run with these settings")
        parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
        parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
        parser.add_argument("--cpu-workers", type=int, metavar="N", help="on CPU, run each batch as N pieces on N "
                            "threads (default 0: one per CPU thread on 2-8 threads, else one pass; "
                            "1: one multi-threaded pass)")
        parser.add_argument("--out", metavar="DIR", help="artifact folder (default: MODELS_DIR/rm-TIMESTAMP)")
    elif name == "models":
        parser.add_argument("--json", action="store_true", help="print one JSON array")
    elif name == "eval":
        parser.add_argument("--model", metavar="ID|PATH", help="registered model id or a model folder "
                            "(default: the newest personal model)")
        parser.add_argument("--data", metavar="FILE", required=True, help="preference file in any import format")
        parser.add_argument("--source", metavar="NAME", help="source name for every record (default: the "
                            "record's 'source' field, else the file name)")
        parser.add_argument("--format", dest="fmt", choices=IMPORT_FORMATS, default="auto")
        parser.add_argument("--skip-invalid", action="store_true", help="evaluate the valid records and skip the "
                            "invalid ones (their count and the first reason are printed)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    elif name == "score":
        parser.add_argument("--model", metavar="ID|PATH", help="default: the newest personal model")
        parser.add_argument("--prompt", required=True, metavar="TEXT")
        parser.add_argument("--response", required=True, metavar="TEXT")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    elif name == "export":
        parser.add_argument("--model", metavar="ID|PATH", help="default: the newest personal model")
        parser.add_argument("--format", dest="fmt", choices=EXPORT_FORMATS, required=True,
                            help="hf: a copy of the Hugging Face folder; onnx: fp32 ONNX; onnx-int8: fp32 + int8, "
                            "the int8 model gated on the dev pairs")
        parser.add_argument("--out", metavar="DIR", required=True, help="new (or empty) output folder")
        parser.add_argument("--force", action="store_true", help="with onnx-int8: write the int8 model even "
                            "when it fails its fidelity gate (loudly)")
        parser.add_argument("--data", metavar="FILE", help="dev pairs for the checks (default: the dev split of "
                            "the model's training snapshot)")
        parser.add_argument("--skip-invalid", action="store_true", help="with --data: skip its invalid records")
        parser.add_argument("--min-agreement", type=float, metavar="X",
                            help=f"with onnx-int8: share of dev pairs int8 must order like fp32 "
                            f"(default {MIN_AGREEMENT})")
        parser.add_argument("--int8", dest="int8_scheme", choices=INT8_SCHEMES,
                            help="with onnx-int8: dynamic = int8 weights and int8 compute (fastest; activations "
                            "rounded per tensor), weights = int8 weights, fp32 compute (as small, fp32 speed, "
                            "near-fp32 scores); auto (default) writes dynamic if it passes the gate, else weights")
        parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
        parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    elif name == "serve":
        parser.add_argument("--host", metavar="HOST", help="interface (default: [server] host, else 127.0.0.1)")
        parser.add_argument("--port", type=int, metavar="N", help="TCP port (default: [server] port, else 8080)")
        parser.add_argument("--model", metavar="ID", action="append", help="serve these registered models "
                            "(repeatable; the first is the default; default: the newest personal model)")
        parser.add_argument("--no-p2p", action="store_true", help="do not start the libp2p host (node.toml [p2p]: "
                            "discovery, signed gossip, model transfer) beside the HTTP API")


# ----------------------------------------------------------------------------------------------
# helpers


def _check_threads(n: int | None) -> None:
    if n is not None and n < 0:
        raise UsageError(f"--threads {n} is negative; give 1 or more, or 0 for torch's default")


def _threads(n: int | None) -> None:
    _check_threads(n)
    if not n:  # None or 0: torch's default, as in train (rm.num_threads = 0)
        return
    import torch

    torch.set_num_threads(n)


def _quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def resolve_model(node: Node, ref: str | None) -> tuple[Path, ModelEntry | None]:
    """(artifact folder, registry entry or None): `ref` is a model id (prefix), a folder, or None = newest personal."""
    from node.rm.pipeline import model_path, newest_model

    if ref is None:
        entry = newest_model(node.store)
        if entry is None:
            raise NodeError("no personal reward model is registered yet; train one with `rewardnode train`, or pass "
                            "--model ID|PATH")
        return model_path(entry), entry
    folder = Path(ref)
    if (folder / "config.json").is_file():
        return folder, None
    if folder.exists() or "/" in ref:
        raise UsageError(f"{ref} is not a model folder (no config.json); pass a registered model id or a folder "
                         "written by `rewardnode train` / `rewardnode export --format hf`")
    entry = node.store.get_model(ref)
    return model_path(entry), entry


class _Skipped:
    """The records --skip-invalid left out: how many, and the first one's line (record in JSON) and reason."""

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def __call__(self, reject: Reject) -> None:
        self.count += 1
        reason = reject.reason.removesuffix(" (or skip bad lines with --skip-invalid)")
        self.first = self.first or f"{reject.where}: {reason}"  # "record N" in a JSON file

    def report(self, path: str) -> str:
        return f"skipped {self.count:,} invalid record(s) of {path} (first: {self.first})"


def _read_pairs(path_text: str, *, source: str | None = None, fmt: str = "auto",
                skipped: _Skipped | None = None) -> list[PreferencePair]:
    """The preference pairs of a file; with `skipped`, invalid records are counted there instead of failing."""
    from node.importing import check_source_flag, iter_records
    from node.rm.pipeline import pairs_from_records

    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give a preference file in any import format (JSONL, JSON, CSV)")
    check_source_flag(source)
    records = iter_records(path, source=source, fmt=fmt, skip_invalid=skipped is not None, rejects=skipped)
    pairs, stats = pairs_from_records(records)
    if not pairs:
        raise NodeError(f"{path} holds no preference pairs ({stats.comparisons} comparisons, {stats.rankings} "
                        f"rankings, {stats.ratings} ratings, {stats.feedback} feedback); give a file with "
                        "comparisons, rankings, ratings or feedback")
    return pairs


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ----------------------------------------------------------------------------------------------
# train


_FLAGS = {"base_model": "--base", "epochs": "--epochs", "max_length": "--max-length", "batch_size": "--batch-size",
          "learning_rate": "--lr", "dev_fraction": "--dev-fraction", "patience": "--patience",
          "eval_every": "--eval-every", "num_threads": "--threads", "device": "--device",
          "cpu_workers": "--cpu-workers"}


def _train_config(node: Node, args: argparse.Namespace) -> Any:
    from node.rm.config import TrainConfig

    overrides = {
        "base_model": args.base, "lora": args.lora, "epochs": args.epochs, "max_length": args.max_length,
        "batch_size": args.batch_size, "learning_rate": args.lr, "seed": args.seed, "dev_fraction": args.dev_fraction,
        "patience": args.patience, "eval_every": args.eval_every, "device": args.device, "num_threads": args.threads,
        "mean_pool_init": args.mean_pool_init, "lora_targets": args.lora_targets, "cpu_workers": args.cpu_workers,
    }
    try:
        config = TrainConfig.from_dict(dict(node.config.table("rm")))
    except (TypeError, ValueError) as e:
        raise NodeError(f"{node.config.config_path} [rm]: {e}") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    short = given.get("max_length", config.max_length)
    if "min_prompt_tokens" not in node.config.table("rm") and config.min_prompt_tokens >= short // 2:
        given["min_prompt_tokens"] = max(1, short // 4)  # a short --max-length: keep room for the response
    try:
        config = replace(config, **given)
    except ValueError as e:
        message = str(e)
        for field, flag in _FLAGS.items():
            message = message.replace(f"rm.{field} ", f"{flag} ")
        raise UsageError(message) from None
    return config


def run_train(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.max_length < 8:
        raise UsageError(f"--max-length {args.max_length} is too short; use 64 or more (256 is the default)")
    _check_threads(args.threads)
    with Node.open(args.home, db=args.db) as node:
        config = _train_config(node, args)
        _check_max_length(node, args, config)
        from node.rm import pipeline
        from node.rm.preflight import check_out_dir

        if args.out:
            check_out_dir(Path(args.out))
        if args.snapshot is not None:
            _check_snapshot(node, args.snapshot)
        snapshot_id = args.snapshot
        if args.resume and snapshot_id is None:  # not a new snapshot: the one the interrupted run trained on
            models_dir = node.config.models_dir
            snapshot_id = pipeline.resumable_snapshot(node.store, models_dir, config, args.source)
            if snapshot_id is None:
                raise NodeError(pipeline.no_checkpoint_message(models_dir, None, args.source, config))
            print(f"resuming the interrupted run on snapshot {snapshot_id[:12]}")
        data = pipeline.training_data(node.store, config, snapshot_id=snapshot_id, sources=args.source)
        s = data.stats
        per_source = ", ".join(f"{k} {v:,}" for k, v in s.by_source.items())
        print(f"snapshot {data.snapshot.id[:12]}: {s.comparisons:,} comparisons, {s.rankings:,} rankings, "
              f"{s.ratings:,} ratings, {s.feedback:,} feedback -> {s.n_pairs:,} pairs ({per_source}); "
              f"{s.both_bad_skipped:,} both_bad left out, {s.ties:,} ties")
        dev_prompts, train_prompts = (len({q.prompt for q in pairs}) for pairs in (data.dev, data.train))
        held_out = dev_prompts / max(1, dev_prompts + train_prompts)
        print(f"training {config.base_model}{' (LoRA)' if config.lora else ''} on {len(data.train):,} pairs, "
              f"dev {len(data.dev):,} ({dev_prompts:,} of {dev_prompts + train_prompts:,} prompts held out, "
              f"{held_out:.0%}); {config.epochs} epoch(s), "
              f"batch {config.batch_size}, max length {config.max_length}, lr {config.learning_rate:g}", flush=True)
        _quiet_hf()
        out = Path(args.out) if args.out else None
        trained = pipeline.train_and_register(node.store, config, data, models_dir=node.config.models_dir,
                                              node_name=node.config.name, out_dir=out, resume=args.resume)
    m = trained.entry.metrics
    counts = trained.card["counts"]
    by_source = ", ".join(f"{k} {_fmt(v)}" for k, v in (m.get("dev_by_source") or {}).items())
    print(f"trained {m['n_train']:,} pairs at {_fmt(m['pairs_per_second'], 1)} pairs/s; truncated "
          f"{counts['n_truncated_train']:,} train and {counts['n_truncated_dev']:,} dev pairs"
          + ("; stopped early" if m.get("stopped_early") else ""))
    print(f"dev accuracy {_fmt(m['dev_accuracy'])} (n={m.get('dev_n') or 0}; {by_source or 'no dev pairs'}); "
          f"ece {_fmt(m['dev_ece'])}; longer-wins baseline {_fmt(m['longer_wins_accuracy'])}; model prefers the "
          f"longer response {_fmt(m['prefers_longer'])}")
    print(f"registered model {trained.entry.id} ({trained.entry.kind}) at {trained.path}")
    return 0


def _check_max_length(node: Node, args: argparse.Namespace, config: Any) -> None:
    """UsageError when max_length is more than the backbone's positions: training would crash mid-way."""
    from node.rm.preflight import backbone_positions

    limit = backbone_positions(config.base_model)
    if limit is None or config.max_length <= limit:
        return
    too_long = f"is more than the backbone's {limit} positions"
    if args.max_length is not None:
        raise UsageError(f"--max-length {config.max_length} {too_long}; use {limit} or less")
    if "max_length" in node.config.table("rm"):
        raise UsageError(f"rm.max_length = {config.max_length} in {node.config.config_path} {too_long}; "
                         f"set it to {limit} or less (or pass --max-length {limit})")
    raise UsageError(f"the default max length {config.max_length} {too_long}; pass --max-length {limit} or "
                     "less (or set rm.max_length in node.toml)")


def _check_snapshot(node: Node, ref: str) -> None:
    """NodeError naming the stored snapshots when `ref` matches none of them."""
    from storage.errors import NotFoundError

    try:
        node.store.get_snapshot(ref)
    except NotFoundError as e:
        snapshots = node.store.list_snapshots()[::-1]  # newest first
        if not snapshots:
            raise NodeError(f"{e.cause}: this node has no snapshots yet; leave out --snapshot to train on a new "
                            "snapshot of everything stored now") from None
        shown = ", ".join(f"{s.id[:12]} ({s.created_at:%Y-%m-%d %H:%M}, {s.total:,} items)" for s in snapshots[:5])
        more = f" and {len(snapshots) - 5} older" if len(snapshots) > 5 else ""
        raise NodeError(f"{e.cause}; stored snapshots, newest first: {shown}{more}; pass one of these ids, or "
                        "leave out --snapshot to train on a new snapshot of everything stored now") from None


# ----------------------------------------------------------------------------------------------
# models


def run_models(args: argparse.Namespace) -> int:
    with Node.open(args.home, db=args.db) as node:
        entries = node.store.list_models()
    if args.json:
        print(json.dumps([{"id": e.id, "kind": e.kind, "name": e.name, "base_model": e.base_model,
                           "created": e.created_at.isoformat(timespec="seconds"), "snapshot": e.snapshot_id,
                           "metrics": e.metrics, "path": e.path, "sha256": e.sha256} for e in entries], indent=2))
        return 0
    if not entries:
        print("no reward models yet; train one with `rewardnode train`")
        return 0
    header = ("id", "kind", "name", "base", "created", "dev acc", "dev n", "longer-wins", "path")
    rows = [(e.id, e.kind, e.name, Path(e.base_model).name or e.base_model,
             e.created_at.strftime("%Y-%m-%d %H:%M"), _fmt(e.metrics.get("dev_accuracy")),
             _fmt(e.metrics.get("dev_n")), _fmt(e.metrics.get("longer_wins_accuracy")), e.path) for e in entries]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        print("  ".join(f"{str(c):<{w}}" for c, w in zip(row, widths, strict=False)) + "  " + str(row[-1]))
    return 0


# ----------------------------------------------------------------------------------------------
# eval, score


def run_eval(args: argparse.Namespace) -> int:
    _threads(args.threads)
    skipped = _Skipped() if args.skip_invalid else None
    pairs = _read_pairs(args.data, source=args.source, fmt=args.fmt, skipped=skipped)
    with Node.open(args.home, db=args.db) as node:
        folder, entry = resolve_model(node, args.model)
    _quiet_hf()
    from node.progress import bar
    from node.rm.artifact import RewardScorer
    from node.rm.evaluate import report_from_rewards, score_pairs

    scorer = RewardScorer(folder)
    enc = scorer.encoder
    started = time.perf_counter()
    with bar(total=len(pairs), desc="scoring", unit="pair") as progress:
        data, r_c, r_r = score_pairs(scorer.model, pairs, enc, EVAL_BATCH_PAIRS, on_batch=progress.update)
    report = report_from_rewards(pairs, r_c.tolist(), r_r.tolist())
    seconds = time.perf_counter() - started
    out = report.to_json()
    out |= {"model": entry.id if entry else str(folder), "data": args.data,
            "n_truncated": data.n_truncated, "max_length": enc.max_length, "seconds": round(seconds, 3)}
    if skipped is not None:
        out["n_skipped_invalid"] = skipped.count
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if skipped is not None and skipped.count:
        print(skipped.report(args.data))
    print(f"model {out['model']} on {args.data}: {report.n_total:,} pairs ({report.n_ties:,} ties), "
          f"{out['n_truncated']:,} truncated to {enc.max_length} tokens, scored in {seconds:.1f} s")
    print(f"accuracy {_fmt(report.accuracy)} (n={report.n:,})   ece {_fmt(report.ece)}   "
          f"mean margin {_fmt(report.mean_margin)}")
    corr = report.length_correlation
    print(f"length bias: longer-wins baseline {_fmt(report.longer_wins_accuracy)}, model prefers longer "
          f"{_fmt(report.prefers_longer)}, reward/length correlation pearson {_fmt(corr.get('pearson'))} "
          f"spearman {_fmt(corr.get('spearman'))}")
    for name, s in report.by_source.items():
        print(f"  {name or '(no source)'}: accuracy {_fmt(s.accuracy)} (n={s.n:,})")
    return 0


def run_score(args: argparse.Namespace) -> int:
    if not args.response.strip():  # as import and /v1/score: an empty response has nothing to score
        raise UsageError(f"--response is {'empty' if not args.response else 'only whitespace'}: give the response "
                         "text to score (an empty prompt is fine, an empty response is not)")
    _threads(args.threads)
    with Node.open(args.home, db=args.db) as node:
        folder, entry = resolve_model(node, args.model)
    _quiet_hf()
    from node.rm.artifact import RewardScorer

    reward = RewardScorer(folder).score([args.prompt], [args.response])[0]
    if args.json:
        print(json.dumps({"model": entry.id if entry else str(folder), "reward": reward}))
    else:
        print(f"{reward:.6f}")
    return 0


# ----------------------------------------------------------------------------------------------
# export


def run_export(args: argparse.Namespace) -> int:
    from node.rm.preflight import check_out_dir

    _threads(args.threads)
    out = Path(args.out)
    check_out_dir(out)
    if args.skip_invalid and not args.data:
        raise UsageError("--skip-invalid applies to --data FILE; add --data or drop --skip-invalid")
    # the int8 flags mean nothing without an int8 model: --format onnx --int8 X wrote fp32 only, in silence
    given = {"--int8": args.int8_scheme, "--force": "" if args.force else None,
             "--min-agreement": args.min_agreement}
    int8_flags = {flag: value for flag, value in given.items() if value is not None}
    if int8_flags and args.fmt != "onnx-int8":
        shown = " ".join(f"{flag} {value}".strip() for flag, value in int8_flags.items())
        verb = "applies" if len(int8_flags) == 1 else "apply"
        raise UsageError(f"{shown} {verb} to --format onnx-int8 (fp32 + int8), not --format {args.fmt}; pass "
                         f"--format onnx-int8, or drop {' and '.join(int8_flags)}")
    min_agreement = MIN_AGREEMENT if args.min_agreement is None else args.min_agreement
    if not 0.0 <= min_agreement <= 1.0:
        raise UsageError(f"--min-agreement {min_agreement} must lie in [0, 1]; 0.995 allows 1 flip in 200 "
                         "pairs")
    skipped = _Skipped() if args.skip_invalid else None
    dev: list[PreferencePair] | None = _read_pairs(args.data, skipped=skipped) if args.data else None
    if skipped is not None and skipped.count:
        print(skipped.report(args.data), file=sys.stderr)
    with Node.open(args.home, db=args.db) as node:
        folder, entry = resolve_model(node, args.model)
        if dev is None and args.fmt != "hf":
            dev = _card_dev_pairs(node, folder, required=args.fmt == "onnx-int8" and not args.force)
    if dev:  # ties were trained towards r_c = r_r: the sign of their tiny gap is noise, not an order to keep
        dev = [q for q in dev if q.p != 0.5]
    name = entry.id if entry else str(folder)
    if args.fmt == "hf":
        return _export_hf(folder, out, entry)
    _quiet_hf()
    from node.rm.export import ExportFidelityWarning, export_onnx, tried_summary

    print(f"exporting model {name} to {out} ({args.fmt}; checks on {len(dev or [])} dev pairs)", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExportFidelityWarning)
        report = export_onnx(folder, out, int8=args.fmt == "onnx-int8", dev_pairs=dev,
                             int8_scheme=args.int8_scheme or "auto", min_agreement=min_agreement,
                             force=args.force,
                             measure_latency=not args.no_latency,
                             progress=lambda line: print(f"  {line} ...", flush=True))
    for w in caught:
        if issubclass(w.category, ExportFidelityWarning):
            print(f"WARNING: {w.message}", file=sys.stderr)
    print(f"exporter {report.exporter} (opset {report.opset}); fp32 max |r_onnx - r_torch| = "
          f"{report.max_abs_diff_vs_torch:.2e} over {report.n_checked} sequences")
    for file, size in report.sizes.items():
        print(f"  {file:<20} {_mb(size):>10}")
    if report.int8_path is not None:
        state = ("PASSED" if report.gate_passed else "FAILED (forced)" if report.gate_passed is False
                 else "NOT RUN (forced, no dev pairs)")
        agreement = "n/a" if report.agreement is None else f"{report.agreement:.2%}"
        print(f"int8 fidelity gate {state}: {agreement} of {report.n_dev_pairs} dev pairs ordered like fp32 "
              f"(required {report.min_agreement:.2%}); wrote {report.int8_scheme} int8")
        if len(report.int8_tried) > 1:
            print(f"  int8 schemes gated in turn: {tried_summary(report.int8_tried)}")
        if report.int8_scheme == "weights":
            print("  weight-only int8: the file stores int8 weights, onnxruntime computes in fp32 (fp32 latency)")
    for kind, by_batch in report.latency_ms.items():
        times = ", ".join(f"batch {b}: {ms:.2f} ms" for b, ms in by_batch.items())
        print(f"  latency {kind:<10} ({report.latency_tokens} tokens, 1 thread) {times}")
    print(f"wrote {out}")
    return 0


def _card_dev_pairs(node: Node, folder: Path, *, required: bool) -> list[PreferencePair] | None:
    """The dev split of the model's training snapshot; None (or NodeError when required) if unavailable."""
    from node.rm.artifact import read_card
    from node.rm.pipeline import dev_pairs_for_card
    from storage.errors import StorageError

    try:
        dev = dev_pairs_for_card(node.store, read_card(folder))
    except (NodeError, StorageError) as e:
        if required:
            raise NodeError(f"the int8 fidelity gate needs the model's dev pairs and they cannot be rebuilt ({e}); "
                            "pass --data FILE with held-out pairs, export --format onnx, or --force") from None
        return None
    if not dev and required:
        raise NodeError("the model's training run held out no dev pairs, so the int8 fidelity gate cannot run; "
                        "pass --data FILE with held-out pairs, export --format onnx, or --force")
    return dev


def _export_hf(folder: Path, out: Path, entry: ModelEntry | None) -> int:
    from node.rm.artifact import WEIGHTS_FILE, export_hf_folder, file_sha256

    if entry is not None and (folder / WEIGHTS_FILE).is_file() and file_sha256(folder / WEIGHTS_FILE) != entry.sha256:
        raise NodeError(f"{folder / WEIGHTS_FILE} no longer has the registered sha256 of model {entry.id}; the "
                        "artifact was modified: train the model again")
    export_hf_folder(folder, out)
    for f in sorted(out.iterdir()):
        print(f"  {f.name:<24} {_mb(f.stat().st_size):>10}")
    print(f"wrote {out} (loads with AutoModelForSequenceClassification.from_pretrained)")
    return 0


# ----------------------------------------------------------------------------------------------
# serve


def _check_host(host: str, where: str) -> None:
    """UsageError when `host` names no address of this machine, so a port in use is the only bind error left."""
    import errno
    import socket

    if not host:
        return
    fix = "give an address of this machine: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise UsageError(f"{where} is not a valid IP address or known host name ({why}); {fix}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind((address[0], 0, *address[2:]))  # port 0: tests the address alone
                return
            except OSError as e:
                if e.errno != errno.EADDRNOTAVAIL:
                    return  # not an address problem: the server reports it when it binds
    raise UsageError(f"{where} is not an address of this machine (cannot assign it); {fix}")


def run_serve(args: argparse.Namespace) -> int:
    from node.http import ServerConfig, run_server
    from node.serve import build_app

    node = Node.open(args.home, db=args.db)
    try:
        try:
            config = ServerConfig.from_toml(node.config.table("server"))
            overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
            config = replace(config, **overrides)
        except ValueError as e:
            raise UsageError(f"{e} (in {node.config.config_path} [server] or the flags)") from None
        where = f"--host {config.host}" if args.host is not None else \
            f"[server] host = {config.host!r} in {node.config.config_path}"
        _check_host(config.host, where)
        _quiet_hf()  # no "Loading weights" bar in the server log when a model loads
        app = build_app(node, models=args.model or (), config=config)
        if not args.model and not node.store.list_models():
            print("warning: no reward model is registered: /v1/score and /v1/compare are off (they answer "
                  "503); train one with `rewardnode train`, then restart `rewardnode serve`", file=sys.stderr)
        p2p = None
        if not args.no_p2p:
            from node.p2p import NodeP2P

            try:
                p2p = NodeP2P.for_node(node).start()
            except NodeError as e:
                raise NodeError(f"{e}; free the [p2p] listen port in {node.config.config_path}, or serve "
                                "without peers: --no-p2p") from None
            print(f"p2p: peer {p2p.host.peer_id} listening on {', '.join(p2p.host.addrs)}", file=sys.stderr)
        try:
            run_server(app, config.host, config.port)
        finally:
            if p2p is not None:
                p2p.stop()
    finally:
        node.close()
    return 0
