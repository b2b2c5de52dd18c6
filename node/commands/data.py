"""`rewardnode import`, `export-data`, `stats` and `aggregate`."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from node.app import Node
from node.errors import ImportFormatError, NodeError, UsageError
from node.importing import SOURCE_NAME_RULE, check_source_flag

IMPORT_FORMATS = ("auto", "trl", "hh", "conversational", "multi", "ratings", "feedback", "demonstrations")
EXPORT_FORMATS = ("trl", "multi")
SQLITE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""A SQLite database is its file plus these companions (write-ahead log, shared memory, rollback journal)."""


COMMANDS = {
    "import": "import preference data (JSONL/JSON/CSV, gzip too) into the store",
    "export-data": "export the stored preference data to a file",
    "stats": "counts per source: prompts, responses, comparisons, annotators",
    "aggregate": "Bradley-Terry strengths, soft labels, agreement, reliability, ambiguity queue",
}


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "import":
        parser.add_argument("file", metavar="FILE", help="JSONL, JSON or CSV file, optionally gzip-compressed "
                            "(not '-': stdin cannot be read twice, which format detection needs)")
        parser.add_argument("--source", metavar="NAME", help="source name for every record (default: the record's "
                            f"'source' field, else the file name). Every source name is {SOURCE_NAME_RULE}")
        parser.add_argument("--format", dest="fmt", choices=IMPORT_FORMATS, default="auto",
                            help="record format (default: detected per record)")
        parser.add_argument("--skip-invalid", action="store_true",
                            help="store the valid records and write the invalid ones, with reasons, to a reject file")
        parser.add_argument("--rejects", metavar="PATH",
                            help="reject file for --skip-invalid, which must not exist yet (default: "
                            "FILE.rejects.jsonl next to the input)")
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


def _input_file(text: str) -> Path:
    """The import's input file, or a UsageError that says what the path is instead."""
    path = Path(text)
    if text == "-":
        raise UsageError("reading from stdin ('-') is not supported; save the data to a file and give its path")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the path of a JSONL, JSON or CSV file inside it")
    if not path.exists():
        raise UsageError(f"{path}: no such file; give the path of a JSONL, JSON or CSV file")
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file; copy the data to a file and give its path")
    return path


def _new_file_path(text: str, flag: str) -> Path:
    """An output file path, refused when it names a folder or its folder is missing."""
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise UsageError(f"{flag} {text} is a folder; give a file path, e.g. {path / 'out.jsonl'}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{flag} {text}: {parent} is a file, not a folder; give another {flag} path")
    if not parent.is_dir():
        raise UsageError(f"{flag} {text}: the folder {parent} does not exist; create it (mkdir -p {parent}) or "
                         f"give another {flag} path")
    return path


def _rejects_path(args: argparse.Namespace, path: Path) -> Path:
    """The reject file of --skip-invalid: a new file, never the input file nor any existing file."""
    if not args.rejects:
        rejects, flag = path.with_name(path.name + ".rejects.jsonl"), "the default reject file"
    else:
        rejects, flag = _new_file_path(args.rejects, "--rejects"), "--rejects"
    if rejects.exists() or rejects.is_symlink():
        if rejects.resolve() == path.resolve() or (rejects.exists() and rejects.samefile(path)):
            raise UsageError(f"--rejects {rejects} is the input file; give another path for the reject file")
        raise UsageError(f"{flag} {rejects} exists; remove it or pass another --rejects path (nothing was imported)")
    return rejects


def run_import(args: argparse.Namespace) -> int:
    from node.importing import Reject, iter_records

    path = _input_file(args.file)
    if args.max_line_bytes <= 0:
        raise UsageError("--max-line-bytes must be positive")
    if args.rejects and not args.skip_invalid:
        raise UsageError("--rejects only applies with --skip-invalid; add --skip-invalid or drop --rejects")
    check_source_flag(args.source)
    rejects_path = _rejects_path(args, path) if args.skip_invalid else Path(os.devnull)  # devnull: never used
    n_rejected = 0
    rejects_file = None

    def reject(skipped: Reject) -> None:
        nonlocal n_rejected, rejects_file
        if rejects_file is None:
            try:
                rejects_file = rejects_path.open("x", encoding="utf-8")  # never over an existing file
            except OSError as exc:
                raise NodeError(f"cannot create the reject file {rejects_path} ({exc.strerror or exc}); pass "
                                "another --rejects path; nothing was imported from this file") from None
        # "line": N, or "record": N in a JSON file, as the import's errors name it
        entry = {skipped.unit: skipped.number, "reason": skipped.reason, "raw": skipped.raw}
        rejects_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        n_rejected += 1

    from node.progress import bar as progress_bar

    started = time.perf_counter()
    stored = False
    with (Node.open(args.home, db=args.db) as node,
          progress_bar(desc=f"importing {path.name}", unit="rec") as bar):
        records = iter_records(path, source=args.source, fmt=args.fmt, skip_invalid=args.skip_invalid,
                               rejects=reject, max_line_bytes=args.max_line_bytes)
        try:
            result = node.store.import_records(records, progress=bar.update)
            stored = True
        except ImportFormatError as exc:  # the store imports a file in ONE transaction: none of it was kept
            raise type(exc)(exc.path, exc.line, exc.problem,  # its class: a JSON file's error says "record N"
                            f"{exc.fix}; nothing was imported from this file") from None
        finally:
            if rejects_file is not None:
                rejects_file.close()
                if not stored:  # ours (opened with "x"), and it would block the next try
                    rejects_path.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    added = sum(result.added.values())
    duplicates = sum(result.duplicates.values())
    if not added and not duplicates and n_rejected:
        which = "the one record" if n_rejected == 1 else f"all {n_rejected} records"
        raise NodeError(f"nothing was stored: {which} of {path} {'is' if n_rejected == 1 else 'are'} invalid; the "
                        f"reasons are in {rejects_path}; fix the records and import again")
    if not added and not duplicates and not n_rejected:
        print(f"imported {path} in {elapsed:.1f} s: nothing added: the file holds no records")
    elif not added and duplicates:
        valid = "valid " if n_rejected else ""
        print(f"imported {path} in {elapsed:.1f} s: nothing new: all {duplicates} {valid}records were already stored")
    else:
        print(f"imported {path}: {_counts(result.added)} added, {duplicates} duplicates skipped in {elapsed:.1f} s")
    if n_rejected:
        print(f"skipped {n_rejected} invalid records; reasons in {rejects_path}")
    return 0


def _counts(counts: dict[str, int]) -> str:
    parts = [f"{n} {kind}" for kind, n in counts.items() if n]
    return ", ".join(parts) if parts else "0 records"


def run_export_data(args: argparse.Namespace) -> int:
    from node.exporting import write_records

    path = _new_file_path(args.file, "FILE")
    with Node.open(args.home, db=args.db) as node:
        _refuse_store_file(path, node.config.storage.url)  # before --force is suggested: it never applies
        if path.exists() and not args.force:
            raise UsageError(f"{path} exists; choose another FILE or add --force to overwrite it")
        n = write_records(path, node.store.iter_records(sources=args.source), fmt=args.fmt)
    print(f"exported {n} records to {path} ({args.fmt})")
    return 0


def _refuse_store_file(path: Path, db_url: str) -> None:
    """UsageError when `path` is the node's SQLite database or one of its companion files."""
    from node.config import sqlite_file

    database = sqlite_file(db_url)
    if database is None:
        return  # PostgreSQL, or a database in memory: no file to overwrite
    target = path.resolve()
    for suffix in SQLITE_FILE_SUFFIXES:
        store_file = database.with_name(database.name + suffix)
        same = path.exists() and store_file.exists() and path.samefile(store_file)  # a hard link too
        if target == store_file.resolve() or same:
            raise UsageError(f"FILE {path} is {'the' if not suffix else 'a'} file of this node's database "
                             f"({store_file}); writing the export there would destroy the stored data: give "
                             "another FILE (nothing was written)")


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
