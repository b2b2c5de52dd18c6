"""`rewardnode import`, `export-data`, `stats` and `aggregate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from node.app import Node
from node.errors import UsageError

IMPORT_FORMATS = ("auto", "trl", "hh", "conversational", "multi", "ratings", "feedback", "demonstrations")
EXPORT_FORMATS = ("trl", "multi")


COMMANDS = {
    "import": "import preference data (JSONL/JSON/CSV, gzip too) into the store",
    "export-data": "export the stored preference data to a file",
    "stats": "counts per source: prompts, responses, comparisons, annotators",
    "aggregate": "Bradley-Terry strengths, soft labels, agreement, reliability, ambiguity queue",
}


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "import":
        parser.add_argument("file", metavar="FILE", help="JSONL, JSON or CSV file, optionally gzip-compressed")
        parser.add_argument("--source", metavar="NAME", help="source name for every record (default: the record's "
                            "'source' field, else the file name)")
        parser.add_argument("--format", dest="fmt", choices=IMPORT_FORMATS, default="auto",
                            help="record format (default: detected per record)")
        parser.add_argument("--skip-invalid", action="store_true",
                            help="store the valid records and write the invalid ones, with reasons, to a reject file")
        parser.add_argument("--rejects", metavar="PATH",
                            help="reject file for --skip-invalid (default: FILE.rejects.jsonl next to the input)")
        parser.add_argument("--max-line-bytes", type=int, default=16 * 1024 * 1024, metavar="N",
                            help="longest accepted input line (default: 16 MiB)")
    elif name == "export-data":
        parser.add_argument("file", metavar="FILE", help="output JSONL file (.gz compresses)")
        parser.add_argument("--format", dest="fmt", choices=EXPORT_FORMATS, default="trl",
                            help="trl: one line per comparison; multi: one line per prompt with all its votes")
        parser.add_argument("--source", metavar="NAME", action="append", help="only these sources (repeatable)")
        parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    elif name in ("stats", "aggregate"):
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "aggregate":
            parser.add_argument("--top", type=int, default=10, metavar="N", help="ambiguous pairs to show (default 10)")


def _progress(desc: str, unit: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(desc=desc, unit=unit, file=sys.stderr, disable=None, mininterval=0.5, dynamic_ncols=True)


def run_import(args: argparse.Namespace) -> int:
    from node.importing import iter_records

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give the path of a JSONL, JSON or CSV file")
    if args.max_line_bytes <= 0:
        raise UsageError("--max-line-bytes must be positive")
    if args.rejects and not args.skip_invalid:
        raise UsageError("--rejects only applies with --skip-invalid; add --skip-invalid or drop --rejects")
    rejects_path = Path(args.rejects) if args.rejects else path.with_name(path.name + ".rejects.jsonl")
    n_rejected = 0
    rejects_file = None

    def reject(line: int, raw: str, reason: str) -> None:
        nonlocal n_rejected, rejects_file
        if rejects_file is None:
            rejects_file = rejects_path.open("w", encoding="utf-8")
        rejects_file.write(json.dumps({"line": line, "reason": reason, "raw": raw}, ensure_ascii=False) + "\n")
        n_rejected += 1

    started = time.perf_counter()
    with Node.open(args.home, db=args.db) as node, _progress(f"importing {path.name}", "rec") as bar:
        records = iter_records(path, source=args.source, fmt=args.fmt, skip_invalid=args.skip_invalid,
                               rejects=reject, max_line_bytes=args.max_line_bytes)
        try:
            result = node.store.import_records(records, progress=bar.update)
        finally:
            if rejects_file is not None:
                rejects_file.close()
    elapsed = time.perf_counter() - started
    added = sum(result.added.values())
    print(f"imported {path}: {_counts(result.added)} added, {sum(result.duplicates.values())} duplicates skipped "
          f"in {elapsed:.1f} s")
    if n_rejected:
        print(f"skipped {n_rejected} invalid records; reasons in {rejects_path}")
    return 0 if added or not n_rejected else 1


def _counts(counts: dict[str, int]) -> str:
    parts = [f"{n} {kind}" for kind, n in counts.items() if n]
    return ", ".join(parts) if parts else "0 records"


def run_export_data(args: argparse.Namespace) -> int:
    from node.exporting import write_records

    path = Path(args.file)
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; choose another FILE or add --force to overwrite it")
    with Node.open(args.home, db=args.db) as node:
        n = write_records(path, node.store.iter_records(sources=args.source), fmt=args.fmt)
    print(f"exported {n} records to {path} ({args.fmt})")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    with Node.open(args.home, db=args.db) as node:
        stats = {name: asdict(s) for name, s in node.store.stats().items()}
    if args.json:
        print(json.dumps({"sources": stats}, indent=2))
        return 0
    if not stats:
        print("the store is empty; add data with `rewardnode import FILE`")
        return 0
    columns = ["prompts", "responses", "comparisons", "rankings", "ratings", "feedback", "demonstrations", "annotators"]
    width = max(len("source"), *(len(n) for n in stats))
    print(f"{'source':<{width}}  " + "  ".join(f"{c:>12}" for c in columns))
    for name, s in sorted(stats.items()):
        print(f"{name:<{width}}  " + "  ".join(f"{s[c]:>12,}" for c in columns))
    return 0


def run_aggregate(args: argparse.Namespace) -> int:
    from node.curation import aggregate_store, format_summary

    if args.top < 0:
        raise UsageError("--top must be >= 0")
    with Node.open(args.home, db=args.db) as node:
        summary = aggregate_store(node.store, top=args.top)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_summary(summary))
    return 0
