"""Records -> rows: validation and content hashing for the bulk import, with no database.

`RowBuilder.build(batch)` checks a batch of records the way the schema would (and more), hashes
them (storage/hashing.py) and returns a `RowBatch`: per table, its columns in `COLUMNS` order as
tuples of plain values. It touches no database, so it can run in another process than the one
inserting: an iterable of records that `BuildsRows` hands the importer its batches ready-made
(node/importing.py builds them in a worker process for big files); a RowBatch pickles.

Source, annotator and campaign columns hold NAMES here, not ids: the importer maps them to ids
in the transaction that inserts the rows. A prompt or response is emitted once per builder (the
first record that uses it); records are emitted every time (the database counts duplicates).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from hashlib import sha256
from typing import Any, Final, NoReturn, Protocol, runtime_checkable

from storage import hashing
from storage import models as m
from storage.errors import InvalidRecordError
from storage.records import MIRRORED, OUTCOMES, Comparison, Demonstration, Feedback, Ranking, Rating, Record

CACHE_LIMIT: Final = 300_000
"""Entries per text-to-id cache; past it the cache is emptied (bounded memory, same result)."""
_KINDS_OF: Final[frozenset[type]] = frozenset({Comparison, Ranking, Rating, Feedback, Demonstration})
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
"""Row tuple layout per table (checked against the table when the insert statements are compiled)."""
NAME_COLUMNS: Final[dict[str, str]] = {"source_id": "sources", "annotator_id": "annotators",
                                       "campaign_id": "campaigns"}
"""Columns that hold a name in a RowBatch and an id in the database, and the table of the names."""
CHECKED_CONSTRAINTS: Final = frozenset({
    "ck_comparisons_outcome", "ck_comparisons_distinct_responses", "ck_comparisons_confidence",
    "ck_comparisons_agreement", "ck_ratings_value_on_scale"})
"""CHECK constraints of the imported tables that `RowBuilder` enforces itself, so the importer may
skip them on SQLite (a test fails when the schema gains one that is not listed here)."""


@dataclass(frozen=True, slots=True)
class RowBatch:
    """The rows of one batch of records, column by column; names (not ids) in the NAME_COLUMNS."""

    n_records: int  # records the batch was built from
    columns: dict[str, list[tuple[Any, ...]]]  # table -> its columns in COLUMNS order ([] when no rows);
    # prompts, responses (only those new to the builder) and every kind
    ranking_items: dict[str, list[str]]  # ranking key -> response ids best first (ids resolved on insert)
    models: dict[str, str] = field(default_factory=dict)  # response id -> the model a record named for it
    # (first one in the batch): fills a stored response whose model is unknown (responses are shared)

    def n_rows(self, table: str) -> int:
        columns = self.columns[table]
        return len(columns[0]) if columns else 0


@runtime_checkable
class BuildsRows(Protocol):
    """Records that build their own row batches with `builder` (e.g. in a worker process, in order)."""

    def row_batches(self, builder: RowBuilder, batch_size: int) -> Generator[RowBatch, None, None]: ...


def build_batches(records: Iterable[Record], builder: RowBuilder,
                  batch_size: int) -> Generator[RowBatch, None, None]:
    """The row batches of `records`, `batch_size` records each, built here."""
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= batch_size:
            yield builder.build(batch)
            batch = []
    if batch:
        yield builder.build(batch)


class RowBuilder:
    """Validates and hashes records into rows; remembers the prompts and responses it emitted."""

    def __init__(self, dialect: str, now: datetime) -> None:
        self.dialect = dialect
        self.is_pg = dialect == "postgresql"
        self.ts: Any = m.sqlite_timestamp if dialect == "sqlite" else m.to_utc
        self.now = self.ts(now)  # naive means UTC, as everywhere in the store
        self.prompt_ids: dict[str, str] = {}  # prompt text -> id, emitted by this builder
        self.response_ids: dict[str, dict[str, str]] = {}  # prompt id -> {text -> id}, emitted
        self.n_cached_responses = 0
        self.position = 0  # records built before the current batch

    def build(self, batch: list[Record]) -> RowBatch:
        """Validate and hash one batch; InvalidRecordError names the first bad record and stores nothing."""
        self._check(batch)
        if len(self.prompt_ids) > CACHE_LIMIT:
            self.prompt_ids.clear()
        if self.n_cached_responses > CACHE_LIMIT:
            self.response_ids.clear()
            self.n_cached_responses = 0
        out = self._rows(batch)
        self.position += len(batch)
        return out

    # ---- validation -----------------------------------------------------------------------------

    def _check(self, batch: list[Record]) -> None:
        """Refuse records the schema would refuse, naming the record and the fix."""
        for i, r in enumerate(batch):
            if type(r) not in _KINDS_OF:  # exact types: _rows dispatches on type(r) is ...
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

    # ---- rows -----------------------------------------------------------------------------------

    def _rows(self, batch: list[Record]) -> RowBatch:
        """Row tuples per table for one batch; new prompts and responses first."""
        now, ts = self.now, self.ts
        prompt_ids, response_ids = self.prompt_ids, self.response_ids
        prompts: list[tuple[Any, ...]] = []
        responses: list[tuple[Any, ...]] = []
        out: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in m.KINDS}
        comparisons = out["comparisons"]
        ranking_items: dict[str, list[str]] = {}
        sha_prompt, sha_response, cjson = hashing.prompt_id, hashing.response_id, hashing.canonical_json
        mirrored = MIRRORED

        named: dict[str, str] = {}  # response id -> model (RowBatch.models)

        def response(pid: str, text: str, model: str | None) -> str:
            known = response_ids.get(pid)
            if known is None:
                known = response_ids[pid] = {}
            rid = known.get(text)
            if rid is None:
                rid = known[text] = sha_response(pid, text)
                responses.append((rid, pid, text, model, now))
            if model is not None and rid not in named:
                named[rid] = model
            return rid

        for i, r in enumerate(batch):
            try:
                prompt = r.prompt
                pid = prompt_ids.get(prompt)
                if pid is None:
                    pid = prompt_ids[prompt] = sha_prompt(prompt)
                    prompts.append((pid, prompt, r.source, now))
                created = now if (at := r.created_at) is None else ts(at)
                if type(r) is Comparison:  # the hot path: response_id and hashing.comparison_key inlined
                    a, b = r.response_a, r.response_b
                    known = response_ids.get(pid)
                    if known is None:
                        known = response_ids[pid] = {}
                    aid = known.get(a)
                    if aid is None:
                        aid = known[a] = sha256((pid + "\x00" + a).encode()).hexdigest()
                        responses.append((aid, pid, a, r.model_a, now))
                    bid = known.get(b)
                    if bid is None:
                        bid = known[b] = sha256((pid + "\x00" + b).encode()).hexdigest()
                        responses.append((bid, pid, b, r.model_b, now))
                    if r.model_a is not None and aid not in named:
                        named[aid] = r.model_a
                    if r.model_b is not None and bid not in named:
                        named[bid] = r.model_b
                    source, outcome, ann, ext, camp = r.source, r.outcome, r.annotator, r.external_id, r.campaign
                    if aid < bid:  # the vote's key: the responses in id order (hashing.comparison_key)
                        hashed = "comparison:" + pid + aid + bid + cjson([source, outcome, ann, ext, camp])
                    else:  # sides swapped: the key of the same vote written the other way round
                        mirror = mirrored[outcome]
                        hashed = "comparison:" + pid + bid + aid + cjson([source, mirror, ann, ext, camp])
                    comparisons.append((
                        sha256(hashed.encode()).hexdigest(),
                        pid, aid, bid, outcome, r.confidence, r.comment, r.agreement, source, ann, r.subset, camp,
                        ext, r.idempotency_key, created))
                    continue
                if type(r) is Ranking:
                    models = r.models or (None,) * len(r.responses)
                    ids = [response(pid, text, model) for text, model in zip(r.responses, models, strict=True)]
                    rk = hashing.ranking_key(r, pid, ids)
                    ranking_items[rk] = ids
                    out["rankings"].append((rk, pid, *_tail(r, r.annotator, created)))
                elif type(r) is Rating:
                    rid = response(pid, r.response, r.model)
                    out["ratings"].append((hashing.rating_key(r, rid), pid, rid, float(r.value),
                                           float(r.scale_min), float(r.scale_max), r.comment,
                                           *_tail(r, r.annotator, created)))
                elif type(r) is Feedback:
                    rid = response(pid, r.response, r.model)
                    out["feedback"].append((hashing.feedback_key(r, rid), pid, rid, r.thumbs_up, r.comment,
                                            *_tail(r, r.annotator, created)))
                elif type(r) is Demonstration:
                    out["demonstrations"].append((hashing.demonstration_key(r, pid), pid, r.response,
                                                  *_tail(r, r.author, created)))
            except UnicodeEncodeError as exc:
                self._bad(i, r, f"a text holds a character that is not valid Unicode ({exc.reason}: "
                                f"{exc.object[exc.start:exc.end]!r}), e.g. a lone surrogate from a JSON \\ud800 escape")
        self.n_cached_responses += len(responses)
        tables = {"prompts": prompts, "responses": responses, **out}
        return RowBatch(len(batch), {t: list(zip(*rows, strict=True)) for t, rows in tables.items()}, ranking_items,
                        named)


def _tail(r: Record, who: str | None, created: Any) -> tuple[Any, ...]:
    return (r.source, who, r.subset, r.campaign, r.external_id, r.idempotency_key, created)


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


__all__ = ["CACHE_LIMIT", "CHECKED_CONSTRAINTS", "COLUMNS", "NAME_COLUMNS", "BuildsRows", "RowBatch", "RowBuilder",
           "build_batches"]
