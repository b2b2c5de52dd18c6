"""Bulk import: every record of an iterable in ONE transaction, deduplicated by content hash.

Speed comes from three things: no ORM objects (rows are plain tuples), one executemany per table
per batch on the raw DBAPI cursor (`INSERT ... ON CONFLICT DO NOTHING` compiled from SQLAlchemy's
dialect inserts), and per-transaction caches so a prompt, response, source, annotator or campaign
is hashed and inserted once however many records repeat it. On SQLite, foreign keys are not
re-checked row by row during the import (PRAGMA foreign_keys=OFF for this one transaction, back ON
after): every referenced row is inserted or looked up first in the same write-locked transaction,
so they hold by construction (the tests run PRAGMA foreign_key_check to prove it).

Duplicates: a record whose key (storage/hashing.py) or idempotency_key is already stored, or
appeared earlier in the same iterable, is counted in `ImportResult.duplicates` and not stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from functools import lru_cache
from hashlib import sha256
from typing import Any, Final, NoReturn

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from storage import hashing
from storage import models as m
from storage.db import SQLITE_CACHE_KIB, SQLITE_IMPORT_CACHE_KIB, begin_write, translate
from storage.errors import InvalidRecordError, StorageError
from storage.records import OUTCOMES, Comparison, Demonstration, Feedback, Ranking, Rating, Record
from storage.types import ImportResult

DEFAULT_BATCH_SIZE: Final = 5000
CACHE_LIMIT: Final = 300_000
"""Entries per text-to-id cache; past it the cache is emptied (bounded memory, same result)."""
_NAME_CHUNK: Final = 500
_KIND_OF: Final[dict[type, str]] = {
    Comparison: "comparisons", Ranking: "rankings", Rating: "ratings", Feedback: "feedback",
    Demonstration: "demonstrations",
}
_LABEL_TAIL: Final = ("source_id", "annotator_id", "subset", "campaign_id", "external_id", "idempotency_key",
                      "created_at")
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "sources": ("name", "created_at"),
    "annotators": ("name", "created_at"),
    "campaigns": ("name", "created_at"),
    "prompts": ("id", "text", "source_id", "created_at"),
    "responses": ("id", "prompt_id", "text", "model", "created_at"),
    "comparisons": ("key", "prompt_id", "response_a_id", "response_b_id", "outcome", "confidence", "comment",
                    "agreement", *_LABEL_TAIL),
    "rankings": ("key", "prompt_id", *_LABEL_TAIL),
    "ranking_items": ("ranking_id", "position", "response_id"),
    "ratings": ("key", "prompt_id", "response_id", "value", "scale_min", "scale_max", "comment", *_LABEL_TAIL),
    "feedback": ("key", "prompt_id", "response_id", "thumbs_up", "comment", *_LABEL_TAIL),
    "demonstrations": ("key", "prompt_id", "text", *_LABEL_TAIL),
}
"""Row tuple layout per table; the same order as the table's columns (checked when compiling)."""


def insert_ignore_sql(table: Table, columns: Sequence[str], dialect_name: str) -> str:
    """`INSERT INTO table (columns) VALUES (...) ON CONFLICT DO NOTHING` with positional placeholders."""
    if dialect_name == "sqlite":
        stmt: Any = sqlite.insert(table).on_conflict_do_nothing()
        dialect: Any = sqlite.dialect()
    else:
        stmt = postgresql.insert(table).inline().on_conflict_do_nothing()
        dialect = postgresql.psycopg.dialect(paramstyle="format")  # type: ignore[no-untyped-call]
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    if list(compiled.positiontup or ()) != list(columns):
        raise RuntimeError(f"column order of {table.name} changed: {compiled.positiontup} != {list(columns)}; "
                           "update storage/importer.py COLUMNS to the table's column order")
    return str(compiled.string)


@lru_cache(maxsize=4)
def _insert_sql(dialect_name: str) -> dict[str, str]:
    """The insert statement of every table, compiled once per dialect (compiling costs ~1 ms each)."""
    return {name: insert_ignore_sql(m.Base.metadata.tables[name], cols, dialect_name) for name, cols in COLUMNS.items()}


def import_records(engine: Engine, records: Iterable[Record], *, batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: Callable[[int], None] | None = None) -> ImportResult:
    """Store `records` in one transaction; any exception (from the iterable or the database) stores nothing."""
    if batch_size < 1:
        raise InvalidRecordError(f"batch_size must be >= 1, got {batch_size}", "pass a positive batch size")
    now = datetime.now(UTC)
    with engine.connect() as conn:
        raw = dbapi_connection(conn)
        is_sqlite = conn.dialect.name == "sqlite"
        if is_sqlite:  # outside any transaction: both pragmas are no-ops inside one
            raw.execute("PRAGMA foreign_keys=OFF")
            raw.execute(f"PRAGMA cache_size={-SQLITE_IMPORT_CACHE_KIB}")
        try:
            with begin_write(conn):
                importer = _Importer(conn, now)
                batch: list[Record] = []
                for record in records:
                    batch.append(record)
                    if len(batch) >= batch_size:
                        importer.flush(batch)
                        if progress is not None:
                            progress(len(batch))
                        batch = []
                if batch:
                    importer.flush(batch)
                    if progress is not None:
                        progress(len(batch))
                return importer.result()
        finally:
            if is_sqlite and not conn.invalidated:
                raw.execute("PRAGMA foreign_keys=ON")
                raw.execute(f"PRAGMA cache_size={-SQLITE_CACHE_KIB}")


def dbapi_connection(conn: Connection) -> Any:
    """The driver's own connection (sqlite3 / psycopg) under a SQLAlchemy connection."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise StorageError("the database connection was closed during the import", "retry the import")
    return raw


class _Importer:
    """State of one import transaction: caches of ids known in it and counts so far."""

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn = conn
        self.cursor = dbapi_connection(conn).cursor()
        self.dialect = conn.dialect.name
        self.is_pg = self.dialect == "postgresql"
        self.ts: Callable[[datetime], Any] = m.sqlite_timestamp if self.dialect == "sqlite" else m.to_utc
        self.now = self.ts(now)
        self.sql = _insert_sql(self.dialect)
        self.ids: dict[str, dict[str, int]] = {"sources": {}, "annotators": {}, "campaigns": {}}
        self.prompt_ids: dict[str, str] = {}  # prompt text -> id, inserted in this transaction
        self.response_ids: dict[str, dict[str, str]] = {}  # prompt id -> {text -> id}, inserted
        self.n_cached_responses = 0
        self.added = dict.fromkeys(m.KINDS, 0)
        self.seen = dict.fromkeys(m.KINDS, 0)
        self.prompts_added = 0
        self.responses_added = 0
        self.position = 0  # records consumed before the current batch

    def result(self) -> ImportResult:
        return ImportResult(added=dict(self.added),
                            duplicates={k: self.seen[k] - self.added[k] for k in m.KINDS},
                            prompts_added=self.prompts_added, responses_added=self.responses_added)

    # ---- one batch --------------------------------------------------------------------------

    def flush(self, batch: list[Record]) -> None:
        """Validate, hash and insert one batch of records."""
        self._check(batch)
        self._resolve_names(batch)
        if len(self.prompt_ids) > CACHE_LIMIT:
            self.prompt_ids.clear()
        if self.n_cached_responses > CACHE_LIMIT:
            self.response_ids.clear()
            self.n_cached_responses = 0
        rows = self._rows(batch)
        try:
            self.prompts_added += self._insert("prompts", rows.pop("prompts"))
            self.responses_added += self._insert("responses", rows.pop("responses"))
            items = rows.pop("ranking_items_pending")
            for kind in m.KINDS:
                self.added[kind] += self._insert(kind, rows[kind])
            if items:
                self._insert_ranking_items(items)
        except SQLAlchemyError as exc:
            raise translate(exc, f"storing records {self.position + 1}..{self.position + len(batch)}") from exc
        except Exception as exc:
            if isinstance(exc, StorageError) or not _is_dbapi_error(exc):
                raise
            raise translate(exc, f"storing records {self.position + 1}..{self.position + len(batch)}") from exc
        self.position += len(batch)

    def _insert(self, table: str, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        self.cursor.executemany(self.sql[table], rows)
        return int(self.cursor.rowcount)

    def _check(self, batch: list[Record]) -> None:
        """Refuse records the schema would refuse, naming the record and the fix."""
        for i, r in enumerate(batch):
            if type(r) not in _KIND_OF:  # exact types: _rows dispatches on type(r) is ...
                raise InvalidRecordError(
                    f"record {self.position + i + 1} is a {type(r).__name__}, not a storage record",
                    "pass storage.records Comparison, Ranking, Rating, Feedback or Demonstration objects")
            if isinstance(r, Comparison):
                if r.outcome not in OUTCOMES or r.response_a == r.response_b or not (
                        _unit_or_none(r.confidence) and _unit_or_none(r.agreement)):
                    self._bad(i, r, _comparison_problem(r))
            elif isinstance(r, Ranking):
                if (len(r.responses) < 2 or len(set(r.responses)) != len(r.responses)
                        or (r.models is not None and len(r.models) != len(r.responses))):
                    self._bad(i, r, "a ranking needs >= 2 distinct responses (and one model per response, if any)")
            elif isinstance(r, Rating):
                v, lo, hi = r.value, r.scale_min, r.scale_max
                if not (_finite(v) and _finite(lo) and _finite(hi) and lo < hi and lo <= v <= hi):
                    self._bad(i, r, f"rating {v!r} is not a finite number on the scale [{lo!r}, {hi!r}]")
            elif isinstance(r, Feedback) and not isinstance(r.thumbs_up, bool):
                self._bad(i, r, f"thumbs_up must be True or False, got {r.thumbs_up!r}")
            if not r.source:
                self._bad(i, r, "the source name is empty")
            if r.created_at is not None and not isinstance(r.created_at, datetime):
                self._bad(i, r, f"created_at must be a datetime, got {type(r.created_at).__name__}")
            if self.is_pg:
                for f in fields(r):
                    value = getattr(r, f.name)
                    if (isinstance(value, str) and "\x00" in value) or (
                            isinstance(value, tuple) and any(isinstance(s, str) and "\x00" in s for s in value)):
                        self._bad(i, r, f"{f.name} contains a NUL character (\\x00), which PostgreSQL cannot store")

    def _bad(self, i: int, r: Record, problem: str) -> NoReturn:
        where = f"record {self.position + i + 1} ({type(r).__name__} from source {r.source!r}"
        where += f", external_id {r.external_id!r})" if r.external_id is not None else ")"
        raise InvalidRecordError(f"{where}: {problem}",
                                 "fix or drop the record (the importer's --skip-invalid can skip it); nothing was stored")

    def _resolve_names(self, batch: list[Record]) -> None:
        """Make sure every source, annotator and campaign name of the batch has an id."""
        need: dict[str, set[str]] = {"sources": set(), "annotators": set(), "campaigns": set()}
        sources, annotators, campaigns = self.ids["sources"], self.ids["annotators"], self.ids["campaigns"]
        for r in batch:
            if r.source not in sources:
                need["sources"].add(r.source)
            who = r.author if type(r) is Demonstration else r.annotator  # type: ignore[union-attr]
            if who is not None and who not in annotators:
                need["annotators"].add(who)
            if r.campaign is not None and r.campaign not in campaigns:
                need["campaigns"].add(r.campaign)
        for table, names in need.items():
            if names:
                self._name_ids(table, sorted(names))

    def _name_ids(self, table: str, names: list[str]) -> None:
        t = m.Base.metadata.tables[table]
        try:
            self._insert(table, [(name, self.now) for name in names])
            for start in range(0, len(names), _NAME_CHUNK):
                chunk = names[start:start + _NAME_CHUNK]
                for id_, name in self.conn.execute(select(t.c.id, t.c.name).where(t.c.name.in_(chunk))):
                    self.ids[table][name] = id_
        except SQLAlchemyError as exc:
            raise translate(exc, f"storing {table}") from exc
        except Exception as exc:
            if not _is_dbapi_error(exc):
                raise
            raise translate(exc, f"storing {table}") from exc

    def _rows(self, batch: list[Record]) -> dict[str, Any]:
        """Row tuples per table for one batch; new prompts and responses first."""
        now, ts = self.now, self.ts
        src_ids, ann_ids, camp_ids = self.ids["sources"], self.ids["annotators"], self.ids["campaigns"]
        prompt_ids, response_ids = self.prompt_ids, self.response_ids
        prompts: list[tuple[Any, ...]] = []
        responses: list[tuple[Any, ...]] = []
        out: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in m.KINDS}
        comparisons, seen_kind = out["comparisons"], self.seen
        ranking_items: dict[str, list[str]] = {}
        sha_prompt, sha_response, cjson = hashing.prompt_id, hashing.response_id, hashing.canonical_json
        empty: dict[str, str] = {}

        def response(pid: str, text: str, model: str | None) -> str:
            known = response_ids.get(pid)
            if known is None:
                known = response_ids[pid] = {}
            rid = known.get(text)
            if rid is None:
                rid = known[text] = sha_response(pid, text)
                responses.append((rid, pid, text, model, now))
            return rid

        for i, r in enumerate(batch):
            try:
                prompt = r.prompt
                pid = prompt_ids.get(prompt)
                if pid is None:
                    pid = prompt_ids[prompt] = sha_prompt(prompt)
                    prompts.append((pid, prompt, src_ids[r.source], now))
                created = now if (at := r.created_at) is None else ts(at)
                if type(r) is Comparison:  # the hot path: hashing.comparison_key inlined
                    a, b = r.response_a, r.response_b
                    known = response_ids.get(pid) or empty
                    aid = known.get(a) or response(pid, a, r.model_a)
                    bid = known.get(b) or response(pid, b, r.model_b)
                    source, outcome, ann, ext, cname = r.source, r.outcome, r.annotator, r.external_id, r.campaign
                    comparisons.append((
                        sha256(("comparison:" + pid + aid + bid + cjson([source, outcome, ann, ext, cname])).encode()
                               ).hexdigest(),
                        pid, aid, bid, outcome, r.confidence, r.comment, r.agreement, src_ids[source],
                        None if ann is None else ann_ids[ann], r.subset, None if cname is None else camp_ids[cname],
                        ext, r.idempotency_key, created))
                    continue
                src = src_ids[r.source]
                camp = None if r.campaign is None else camp_ids[r.campaign]
                if type(r) is Ranking:
                    models = r.models or (None,) * len(r.responses)
                    ids = [response(pid, text, model) for text, model in zip(r.responses, models, strict=True)]
                    rk = hashing.ranking_key(r, pid, ids)
                    ranking_items[rk] = ids
                    out["rankings"].append((rk, pid, *self._tail(r, r.annotator, src, camp, created)))
                elif type(r) is Rating:
                    rid = response(pid, r.response, r.model)
                    out["ratings"].append((hashing.rating_key(r, rid), pid, rid, float(r.value),
                                           float(r.scale_min), float(r.scale_max), r.comment,
                                           *self._tail(r, r.annotator, src, camp, created)))
                elif type(r) is Feedback:
                    rid = response(pid, r.response, r.model)
                    out["feedback"].append((hashing.feedback_key(r, rid), pid, rid, r.thumbs_up, r.comment,
                                            *self._tail(r, r.annotator, src, camp, created)))
                elif type(r) is Demonstration:
                    out["demonstrations"].append((hashing.demonstration_key(r, pid), pid, r.response,
                                                  *self._tail(r, r.author, src, camp, created)))
            except UnicodeEncodeError as exc:
                self._bad(i, r, f"a text holds a character that is not valid Unicode ({exc.reason}: "
                                f"{exc.object[exc.start:exc.end]!r}), e.g. a lone surrogate from a JSON \\ud800 escape")
        for kind in m.KINDS:
            seen_kind[kind] += len(out[kind])
        self.n_cached_responses += len(responses)
        return {**out, "prompts": prompts, "responses": responses, "ranking_items_pending": ranking_items}

    def _tail(self, r: Record, who: str | None, src: int, camp: int | None, created: Any) -> tuple[Any, ...]:
        return (src, None if who is None else self.ids["annotators"][who], r.subset, camp, r.external_id,
                r.idempotency_key, created)

    def _insert_ranking_items(self, items: dict[str, list[str]]) -> None:
        """Items of the rankings of this batch (new or not: a stored ranking's items conflict and are skipped)."""
        t = m.table_of(m.Ranking)
        keys = list(items)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), _NAME_CHUNK):
            chunk = keys[start:start + _NAME_CHUNK]
            for ranking_id, k in self.conn.execute(select(t.c.id, t.c.key).where(t.c.key.in_(chunk))):
                rows.extend((ranking_id, pos, rid) for pos, rid in enumerate(items[k]))
        self._insert("ranking_items", rows)


def _unit_or_none(x: float | None) -> bool:
    return x is None or (isinstance(x, int | float) and 0.0 <= x <= 1.0)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _comparison_problem(r: Comparison) -> str:
    if r.outcome not in OUTCOMES:
        return f"outcome {r.outcome!r} is not one of {', '.join(OUTCOMES)}"
    if r.response_a == r.response_b:
        return "response_a and response_b are the same text"
    if not _unit_or_none(r.confidence):
        return f"confidence {r.confidence!r} is not in [0, 1]"
    return f"agreement {r.agreement!r} is not in [0, 1]"


def _is_dbapi_error(exc: BaseException) -> bool:
    """True for exceptions raised by the sqlite3 or psycopg driver itself (raw cursor calls)."""
    module = type(exc).__module__
    return module.startswith(("sqlite3", "psycopg"))


__all__ = ["COLUMNS", "DEFAULT_BATCH_SIZE", "import_records", "insert_ignore_sql"]
