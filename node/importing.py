"""Stream typed preference records out of a file: JSONL, JSON or CSV, any of them gzip-compressed.

`iter_records` gives an iterator the store consumes inside one transaction: when it raises an
`ImportFormatError` (FILE:LINE: problem; fix) nothing of the file is stored. The record formats
themselves (trl, hh, conversational, multi, ratings, feedback, demonstrations) live in
node/formats/; this module finds the records in the file. Given to `Store.import_records`, a big
file is read, parsed and hashed in a worker process while the store inserts (node/import_worker.py).

Containers, detected from the content (gzip by its magic bytes, not by the name):
- JSONL: the first non-blank line starts with "{" and is a complete JSON object (unless the object is
  a container, below, and nothing follows it). Lines are read with
  a bounded readline: a line over `max_line_bytes` is refused without reading the rest of it into
  memory. Blank lines are skipped. Line numbers are 1-based physical lines.
- JSON: a top-level array, or a container: an object with a "records" or "data" list and none of the
  keys that make a record (node.formats.dispatch.RECORD_KEYS; an object with them is one record).
  The file is loaded whole, so files over `max_json_bytes` are refused (convert them to JSONL).
  Errors name the 1-based record number, "FILE: record N" (JsonRecordError, whose `line` holds N);
  problems with the file as a whole are reported at line 0.
- CSV (or tab-separated): a header row naming the columns, e.g. prompt,chosen,rejected (trl);
  prompt,response_a,response_b,outcome,annotator[,confidence,comment]; prompt,response,rating,
  scale_min,scale_max; prompt,response,thumbs; prompt,demonstration[,author]. Empty cells of
  non-text columns count as absent. Because a quoted CSV field may span lines, CSV syntax errors,
  bad UTF-8 and over-long lines stop the import even with skip_invalid.
Text is decoded as strict UTF-8 (a leading byte-order mark is allowed); UTF-16/32 files are refused up
front with the iconv command that converts them. An empty (or blank) file holds no records.
JSON nested too deeply to decode is an invalid record (a JSONL line) or an invalid file (JSON).

Source names (--source, a record's "source" field, or the file name it defaults to) follow
SOURCE_NAME_RULE, so that every stored name prints on one line. Other datasets' names ("OpenAssistant
oasst1", "données/v2") are kept as they are.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from json.scanner import make_scanner
from pathlib import Path
from typing import IO, Any, Final, cast

from node import import_worker
from node.errors import ImportFormatError, UsageError
from node.formats import ParseContext, RecordError, fields, parser_for
from node.formats.decoding import (
    LATIN1_FIX,
    check_nul,
    check_surrogates,
    csv_record,
    foreign_encoding,
    is_container,
    json_error,
    too_deep,
)
from node.formats.dispatch import RECORD_KEYS, Parser
from node.formats.fields import json_type, name_problem
from storage.records import Record
from storage.rows import RowBatch, RowBuilder, build_batches

MAX_LINE_BYTES: Final = 16 * 1024 * 1024
"""Longest accepted JSONL/CSV line (the CLI's --max-line-bytes default)."""
MAX_JSON_BYTES: Final = 256 * 1024 * 1024
"""Largest JSON (not JSONL) file loaded whole; larger ones must be converted to JSONL."""
REJECT_RAW_CHARS: Final = 1000
"""How much of a rejected line is passed to the rejects callback."""
SOURCE_NAME_MAX: Final = fields.NAME_MAX  # the labeling API's longest name
SOURCE_NAME_RULE: Final = (f"1-{SOURCE_NAME_MAX} characters, not only spaces, with no control characters "
                           "(no newline or tab; e.g. hh-rlhf, org-a/harmless-base, OpenAssistant oasst1)")
"""What a source name may be, in words for error messages and --help."""

REJECT_LINE: Final = "line"
"""Reject.unit of a JSONL or CSV file: the 1-based physical line (the error says "FILE:N")."""
REJECT_RECORD: Final = "record"
"""Reject.unit of a JSON file: the 1-based record number (the error says "FILE: record N")."""


@dataclass(frozen=True)
class Reject:
    """A record skipped under skip_invalid: where it is (`unit` `number`), its raw text (cut) and why."""

    unit: str  # REJECT_LINE or REJECT_RECORD
    number: int
    raw: str
    reason: str

    @property
    def where(self) -> str:
        """'line 3' or 'record 3', as the import's errors name it."""
        return f"{self.unit} {self.number}"


Rejects = Callable[[Reject], None]
"""rejects(reject) is called for each record skipped with skip_invalid."""

_CHUNK: Final = 1 << 20  # bytes per readline call; longer lines are assembled from pieces
_BOM: Final = b"\xef\xbb\xbf"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_OTHER_COMPRESSION: Final = ((b"BZh", "bzip2", "bunzip2"), (b"\xfd7zXZ\x00", "xz", "unxz"),
                             (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d"), (b"PK\x03\x04", "zip", "unzip"))
_EXTENSIONS: Final = frozenset({"gz", "gzip", "jsonl", "ndjson", "json", "csv", "tsv", "txt"})
_READ_ERRORS: Final = (OSError, EOFError, zlib.error)
_DECODER: Final = json.JSONDecoder()
_DECODE: Final = _DECODER.decode
_SCAN: Final = make_scanner(_DECODER)  # type: ignore[arg-type]  # typeshed types it as a class  # the C scanner: decode() minus two regex matches per line
_CSV_LAYOUTS: Final = ("prompt,chosen,rejected (trl); prompt,response_a,response_b,outcome,annotator; "
                       "prompt,response,rating,scale_min,scale_max; prompt,response,thumbs; prompt,demonstration")


def iter_records(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    fmt: str = "auto",
    skip_invalid: bool = False,
    rejects: Rejects | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_json_bytes: int = MAX_JSON_BYTES,
    parallel: bool | None = None,
) -> RecordFile:
    """The records of a JSONL/JSON/CSV(.gz) file, read lazily; ImportFormatError at the first bad one.

    `parallel`: whether the store may read the file in a worker process (None: when the file is big
    and the machine can, see node/import_worker.py); iterating the result always reads it here.
    """
    parse = parser_for(fmt)  # ValueError for an unknown format
    if source is not None and (problem := source_name_problem(source)) is not None:
        raise ValueError(f"invalid source name: {problem}; use {SOURCE_NAME_RULE}, or None")
    if max_line_bytes <= 0 or max_json_bytes <= 0:
        raise ValueError("max_line_bytes and max_json_bytes must be positive")
    ctx = ParseContext(source=source, default_source=default_source(path))
    if source is None:  # else --source, checked above, overrides the records' own names
        parse = _checking_source(parse, ctx.default_source)
    return RecordFile(_Reader(os.fspath(path), parse, ctx, skip_invalid, rejects, max_line_bytes, max_json_bytes),
                      parallel)


class RecordFile(Iterator[Record]):
    """The records of one file: an iterator, and storage.rows.BuildsRows for `Store.import_records`."""

    def __init__(self, reader: _Reader, parallel: bool | None) -> None:
        self._reader = reader
        self._parallel = parallel
        self._records: Iterator[Record] | None = None

    def __next__(self) -> Record:
        if self._records is None:
            self._records = self._reader.records()
        return next(self._records)

    def row_batches(self, builder: RowBuilder, batch_size: int) -> Generator[RowBatch, None, None]:
        """The file's row batches: built in a worker process for a big file, else here."""
        if self._records is None and self._use_worker():
            self._records = iter(())  # consumed by the worker
            reader = self._reader
            return import_worker.worker_batches(reader.records_reporting_to, reader.rejects, builder, batch_size)
        return build_batches(self, builder, batch_size)

    def _use_worker(self) -> bool:
        if self._parallel is False or not import_worker.can_fork():
            return False
        if self._parallel:
            return True
        try:
            return os.path.getsize(self._reader.path) >= import_worker.WORKER_MIN_BYTES
        except OSError:
            return False  # reading it here reports the problem with FILE:0


class JsonRecordError(ImportFormatError):
    """An invalid record of a JSON (not JSONL) file: `line` is its 1-based record number, and the message
    says "FILE: record N" (a JSON file's records are not one per line)."""

    def __init__(self, path: str, line: int, problem: str, fix: str) -> None:
        super().__init__(path, line, problem, fix)
        self.args = (f"{path}: record {line}: {problem}; {fix}",)


def source_name_problem(name: object) -> str | None:
    """What is wrong with `name` as a source name (None when it follows SOURCE_NAME_RULE): 'a\\nb' holds '\\n'."""
    return name_problem(name, SOURCE_NAME_MAX)  # the rule annotator and author names follow too


def check_source_flag(source: str | None) -> None:
    """UsageError when a --source NAME breaks SOURCE_NAME_RULE (checked before anything is read)."""
    if source is not None and (problem := source_name_problem(source)) is not None:
        raise UsageError(f"invalid --source: {problem}; use {SOURCE_NAME_RULE}")


def _checking_source(parse: Parser, default: str) -> Parser:
    """`parse`, after refusing a record whose source name (its own, or the file name's) breaks the rule."""
    good: set[str] = set()  # names that passed

    def checked(d: dict[str, Any], ctx: ParseContext) -> Any:
        own = d.get(fields.SOURCE)
        name = default if own is None else own
        if type(name) is str and name not in good and (own is None or name.strip()):  # the parser refuses blanks
            if (problem := source_name_problem(name)) is None:
                good.add(name)
            elif own is None:
                raise RecordError(f"the record has no 'source' and the file name gives an invalid source name: "
                                  f"{problem}", f"pass --source NAME ({SOURCE_NAME_RULE}), or add a 'source'")
            else:
                raise RecordError(f"field 'source' is not a valid source name: {problem}",
                                  f"use {SOURCE_NAME_RULE}, or override it for the whole file with --source NAME")
        return parse(d, ctx)

    return checked


def default_source(path: str | os.PathLike[str]) -> str:
    """The file name without its data extensions: "data/train.jsonl.gz" -> "train".

    >>> default_source("exports/org-a.votes.csv.gz")
    'org-a.votes'
    """
    name = Path(path).name
    while True:
        stem, dot, ext = name.rpartition(".")
        if not (dot and stem and ext.lower() in _EXTENSIONS):
            return name
        name = stem


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"


def _preview(raw: object) -> str:
    if isinstance(raw, bytes):
        text = raw[:4 * REJECT_RAW_CHARS].rstrip(b"\r\n").decode("utf-8", "replace")
    elif isinstance(raw, str):
        text = raw
    else:
        try:
            text = json.dumps(raw, ensure_ascii=False, default=str)
        except RecursionError:
            text = "(a record nested too deeply to show)"
    return text[:REJECT_RAW_CHARS]


class _LineTooLong(Exception):
    """Internal: the line being read passed max_line_bytes; the rest of it is still unread."""


class _Reader:
    """One pass over one file; holds what every container reader needs."""

    def __init__(self, path: str, parse: Parser, ctx: ParseContext, skip_invalid: bool,
                 rejects: Rejects | None, max_line_bytes: int, max_json_bytes: int) -> None:
        self.path = path
        self.parse = parse
        self.ctx = ctx
        self.skip_invalid = skip_invalid
        self.rejects = rejects
        self.limit = max_line_bytes
        self.cap = max_line_bytes + 1  # readline size that tells "exactly the limit" from "longer"
        self.chunk = min(_CHUNK, self.cap)
        self.max_json_bytes = max_json_bytes
        self.gzip = False
        self.long_head = b""  # the start of the last over-long line, for the rejects callback

    # ---- errors ---------------------------------------------------------------------------------
    def error(self, line: int, problem: str, fix: str) -> ImportFormatError:
        return ImportFormatError(self.path, line, problem, fix)

    def reject(self, line: int, raw: object, exc: RecordError, *, record: bool = False) -> None:
        """Raise the record's error, or report it to `rejects` and go on under skip_invalid.
        `record`: `line` is the record number in a JSON file (the error says "FILE: record N")."""
        if not self.skip_invalid:
            located = JsonRecordError if record else ImportFormatError
            raise located(self.path, line, exc.problem, exc.fix) from None
        if self.rejects is not None:
            self.rejects(Reject(REJECT_RECORD if record else REJECT_LINE, line, _preview(raw), str(exc)))

    def unreadable(self, line: int, exc: BaseException) -> ImportFormatError:
        if self.gzip:
            return self.error(line, f"the gzip data is truncated or corrupt ({exc})",
                              "re-download or recompress the file; `gzip -t FILE` checks it")
        return self.error(line, f"the file cannot be read ({exc})", "check the file and its disk")

    def too_long(self) -> RecordError:
        return RecordError(f"line is longer than {_human(self.limit)} ({self.limit:,} bytes, the "
                           f"--max-line-bytes limit)", "split the record or raise --max-line-bytes")

    # ---- reading --------------------------------------------------------------------------------
    def records_reporting_to(self, rejects: Rejects | None) -> Iterator[Record]:
        """records(), reporting skipped lines to `rejects` instead (a worker process sends them back)."""
        self.rejects = rejects
        return self.records()

    def records(self) -> Iterator[Record]:
        with self.open_file() as f:
            kind, bom = self.sniff(f)
            if kind == "empty":
                return
            try:
                f.seek(len(_BOM) if bom else 0)
            except _READ_ERRORS as exc:
                raise self.unreadable(0, exc) from exc
            if kind == "jsonl":
                yield from self.jsonl(f)
            elif kind == "json":
                yield from self.json(f)
            else:
                yield from self.csv(f)

    def open_file(self) -> IO[bytes]:
        try:
            with open(self.path, "rb") as probe:
                magic = probe.read(6)
        except OSError as exc:
            raise self.error(0, f"cannot open the file ({exc.strerror or exc})",
                             "check the path and its permissions") from exc
        for prefix, name, tool in _OTHER_COMPRESSION:
            if magic.startswith(prefix):
                raise self.error(0, f"the file is {name}-compressed; only gzip is read",
                                 f"decompress it ({tool}) or recompress it with gzip")
        if magic.startswith(_GZIP_MAGIC):
            self.gzip = True
            return cast(IO[bytes], gzip.open(self.path, "rb"))  # a GzipFile: readline(size), seek
        return open(self.path, "rb", buffering=1 << 16)

    def readline(self, f: IO[bytes], line: int) -> bytes:
        """The next line (b"" at the end); raises _LineTooLong, leaving the rest of a long line unread."""
        try:
            raw = f.readline(self.chunk)
            if len(raw) == self.chunk and raw[-1] != 10:
                return self.long_line(f, raw)
            return raw
        except _READ_ERRORS as exc:
            raise self.unreadable(line, exc) from exc

    def long_line(self, f: IO[bytes], first: bytes) -> bytes:
        """Assemble a line longer than one chunk, stopping (_LineTooLong) as soon as it passes the limit."""
        parts = [first]
        total = len(first)
        while True:
            if total >= self.cap:  # over the limit and no newline yet: read no further
                self.long_head = first[:4 * REJECT_RAW_CHARS]
                raise _LineTooLong
            piece = f.readline(min(self.chunk, self.cap - total))
            if not piece:
                break
            parts.append(piece)
            total += len(piece)
            if piece[-1] == 10:
                break
        return b"".join(parts)

    def skip_rest_of_line(self, f: IO[bytes], line: int) -> None:
        try:
            while True:
                piece = f.readline(self.chunk)
                if not piece or piece[-1] == 10:
                    return
        except _READ_ERRORS as exc:
            raise self.unreadable(line, exc) from exc

    def sniff(self, f: IO[bytes]) -> tuple[str, bool]:
        """("jsonl" | "json" | "csv" | "empty", whether a UTF-8 byte-order mark leads the file)."""
        try:
            head = f.read(4096)
            if (foreign := foreign_encoding(head)) is not None:
                raise self.error(0, foreign.problem, foreign.fix)
            bom = head.startswith(_BOM)
            first = head.lstrip()[:1] if not bom else head[len(_BOM):].lstrip()[:1]
            while not first:
                more = f.read(1 << 16)
                if not more:
                    return "empty", bom  # nothing but blanks: no records, like a header-only CSV or []
                first = more.lstrip()[:1]
            f.seek(len(_BOM) if bom else 0)
        except _READ_ERRORS as exc:
            raise self.unreadable(0, exc) from exc
        if first == b"[":
            return "json", bom
        if first != b"{":
            return "csv", bom
        line = 0
        while True:  # the first non-blank line: a complete object means JSONL
            line += 1
            try:
                raw = self.readline(f, line)
            except _LineTooLong:
                return "jsonl", bom  # the JSONL reader reports the over-long line
            if raw.strip():
                break
        try:
            obj = _DECODE(raw.decode())
        except ValueError:
            return ("json" if raw.rstrip()[-1:] in (b"{", b"[", b",") else "jsonl"), bom
        except RecursionError:
            return "jsonl", bom  # the JSONL reader reports the line as nested too deeply
        if is_container(obj) and self.only_blanks_follow(f):
            return "json", bom  # a one-line {"records": [...]}
        return "jsonl", bom

    def only_blanks_follow(self, f: IO[bytes]) -> bool:
        """Whether the rest of the file is blank (reads up to its first non-blank byte)."""
        try:
            while more := f.read(1 << 16):
                if not more.isspace():
                    return False
        except _READ_ERRORS as exc:
            raise self.unreadable(0, exc) from exc
        return True

    # ---- JSONL: the hot path ---------------------------------------------------------------------
    def jsonl(self, f: IO[bytes]) -> Iterator[Record]:
        readline = f.readline
        chunk = self.chunk
        scan = _SCAN
        parse = self.parse
        ctx = self.ctx
        line = 0
        while True:
            line += 1
            try:
                raw = readline(chunk)
                if len(raw) == chunk and raw[-1] != 10:
                    raw = self.long_line(f, raw)
            except _LineTooLong:
                self.reject(line, self.long_head, self.too_long())
                self.skip_rest_of_line(f, line)
                continue
            except _READ_ERRORS as exc:
                raise self.unreadable(line, exc) from exc
            if not raw:
                return
            if raw.isspace():
                continue
            try:
                text = raw.decode()
                try:
                    obj, end = scan(text, 0)
                    if end != len(text) and not text[end:].isspace():
                        raise ValueError(text)
                except (StopIteration, ValueError):  # leading blanks, or malformed: decode() says where
                    obj = _DECODE(text.rstrip("\r\n"))
            except UnicodeDecodeError as exc:
                self.reject(line, raw, RecordError(
                    f"the line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})",
                    LATIN1_FIX))
                continue
            except ValueError as exc:
                self.reject(line, raw, json_error(exc, "each line must be one complete JSON object"))
                continue
            except RecursionError:
                self.reject(line, raw, too_deep())
                continue
            try:
                if type(obj) is not dict:
                    raise RecordError(f"the line holds a JSON {json_type(obj)}, not an object",
                                      "write one JSON object per line")
                if b"\\ud" in raw or b"\\uD" in raw:
                    check_surrogates(obj)
                if b"\\u0000" in raw:
                    check_nul(obj)
                parsed = parse(obj, ctx)
            except RecordError as exc:
                self.reject(line, raw, exc)
                continue
            if type(parsed) is list:
                yield from parsed
            else:
                yield parsed  # type: ignore[misc]  # a single Record

    # ---- JSON: loaded whole ----------------------------------------------------------------------
    def json(self, f: IO[bytes]) -> Iterator[Record]:
        try:
            data = f.read(self.max_json_bytes + 1)
        except _READ_ERRORS as exc:
            raise self.unreadable(0, exc) from exc
        if len(data) > self.max_json_bytes:
            raise self.error(0, f"the JSON file is larger than {_human(self.max_json_bytes)} and is loaded whole",
                             "convert it to JSONL, one record per line (e.g. jq -c '.[]' FILE > FILE.jsonl)")
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            bad_line = data.count(b"\n", 0, exc.start) + 1
            raise self.error(0, f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {bad_line})",
                             LATIN1_FIX) from None
        surrogates = b"\\ud" in data or b"\\uD" in data
        nul = b"\\u0000" in data
        del data
        try:
            top = _DECODE(text)
        except ValueError as exc:
            problem = json_error(exc, "")
            raise self.error(0, problem.problem, "fix the JSON, or write one record per line as JSONL") from None
        except RecursionError:
            raise self.error(0, too_deep().problem, too_deep().fix) from None
        del text
        items = top
        if type(top) is dict and not RECORD_KEYS.isdisjoint(top):
            items = [top]  # a single record, not a container (even if it holds a "data" list)
        elif type(top) is dict:
            items = top.get("records", top.get("data"))
            if type(items) is not list:
                raise self.error(0, "the top-level JSON object has no 'records' or 'data' list",
                                 "wrap the records in a list (or in {\"records\": [...]}), or write JSONL")
        elif type(top) is not list:
            raise self.error(0, f"the file holds a JSON {json_type(top)}, not a list of records",
                             "write a JSON list of record objects, or JSONL")
        parse = self.parse
        ctx = self.ctx
        for i, item in enumerate(items):
            try:
                if type(item) is not dict:
                    raise RecordError(f"the record is a JSON {json_type(item)}, not an object",
                                      "make every list item a record object")
                if surrogates:
                    check_surrogates(item)
                if nul:
                    check_nul(item)
                parsed = parse(item, ctx)
            except RecordError as exc:
                self.reject(i + 1, item, exc, record=True)
                continue
            if type(parsed) is list:
                yield from parsed
            else:
                yield parsed  # type: ignore[misc]  # a single Record

    # ---- CSV ------------------------------------------------------------------------------------
    def text_lines(self, f: IO[bytes], counter: list[int]) -> Iterator[str]:
        while True:
            line = counter[0] + 1
            try:
                raw = self.readline(f, line)
            except _LineTooLong:
                too_long = self.too_long()
                raise self.error(line, too_long.problem, too_long.fix) from None
            if not raw:
                return
            counter[0] = line
            try:
                yield raw.decode()
            except UnicodeDecodeError as exc:
                raise self.error(line, f"the line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                                       f"{exc.start + 1})", LATIN1_FIX) from None

    def csv(self, f: IO[bytes]) -> Iterator[Record]:
        if csv.field_size_limit() < self.limit:
            csv.field_size_limit(self.limit)  # process-wide; a field is never longer than a line allows
        counter = [0]
        lines = self.text_lines(f, counter)
        header_text = ""
        for header_text in lines:
            if header_text.strip():
                break
        header_line = counter[0]
        delimiter = "\t" if "\t" in header_text and "," not in header_text else ","
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = [name.strip().lower() for name in next(csv.reader([header_text], delimiter=delimiter))]
        except (csv.Error, StopIteration) as exc:
            raise self.error(header_line, f"the CSV header cannot be read ({exc})",
                             f"start the file with a header row, e.g. {_CSV_LAYOUTS}") from None
        if fields.PROMPT not in header and fields.CHOSEN not in header:
            raise self.error(header_line, f"not JSONL, JSON or a CSV with a known header (columns: "
                                          f"{', '.join(header)[:200]})", f"name the CSV columns, e.g. {_CSV_LAYOUTS}")
        if len(set(header)) != len(header):
            raise self.error(header_line, "the CSV header names a column twice", "give every column one name")
        parse = self.parse
        ctx = self.ctx
        while True:
            start = counter[0] + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise self.error(counter[0], f"CSV syntax error ({exc})",
                                 "quote fields that hold commas, quotes or newlines (RFC 4180)") from None
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                if len(row) != len(header):
                    raise RecordError(f"the row has {len(row)} fields but the header has {len(header)}",
                                      "quote fields that hold the delimiter, or fill in the missing cells")
                check_nul(row)
                parsed = parse(csv_record(header, row), ctx)
            except RecordError as exc:
                self.reject(start, delimiter.join(row), exc)
                continue
            if type(parsed) is list:
                yield from parsed
            else:
                yield parsed  # type: ignore[misc]  # a single Record
