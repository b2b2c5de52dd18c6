"""`Store`: the one object the rest of rewardnode uses to persist and read its data.

>>> store = Store.open("sqlite:///store.db")            # doctest: +SKIP
>>> store.import_records(records).added["comparisons"]  # doctest: +SKIP
>>> snap = store.create_snapshot(sources=["hh-rlhf"])    # doctest: +SKIP

Everything returned is a frozen dataclass (storage/records.py, storage/types.py); every failure is
a `storage.errors.StorageError` whose message says the cause and the fix. The store is safe to use
from several threads (each call takes its own connection); SQLite allows one writer at a time
(others wait up to 30 s), PostgreSQL many.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from storage import aggregations, importer, labeling, reading, registry, samples, snapshots
from storage import models as m
from storage.db import (
    check_connection,
    make_engine,
    normalize_url,
    read_transaction,
    run_migrations,
    translate,
    write_transaction,
)
from storage.errors import InvalidRecordError, StorageError
from storage.labeling import CampaignInfo, CampaignLabelRow, LabelResult, PairText, PairToLabel, TokenInfo
from storage.records import Comparison, Record
from storage.types import (
    AggregationRun,
    AmbiguousItem,
    AnnotatorScore,
    ComparisonRows,
    ImportResult,
    ModelEntry,
    PairLabel,
    QueueEntry,
    RankingRow,
    Snapshot,
    SourceStats,
)

T = TypeVar("T")


class Store:
    """One node's database: records, snapshots, the model registry and aggregation outputs."""

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine made by `storage.db.make_engine`; use `Store.open` instead."""
        self._engine = engine
        self.url = url

    # ---- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Store:
        """Open the database at `url` (sqlite:///PATH or postgresql+psycopg://...), creating or migrating
        its schema to the newest version; StoreUnavailableError/MigrationError say what to fix."""
        parsed = normalize_url(url)
        engine = make_engine(parsed)
        try:
            check_connection(engine)
            run_migrations(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, parsed.render_as_string(hide_password=False))

    def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._engine.url.render_as_string(hide_password=True)!r})"

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return str(self._engine.dialect.name)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for storage's own tests and maintenance; other packages use the methods)."""
        return self._engine

    def _read(self, doing: str, fn: Callable[[Connection], T], *, repeatable: bool = False) -> T:
        try:
            with read_transaction(self._engine, repeatable=repeatable) as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise translate(exc, doing) from exc

    def _write(self, doing: str, fn: Callable[[Connection], T]) -> T:
        try:
            with write_transaction(self._engine) as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise translate(exc, doing) from exc

    # ---- records --------------------------------------------------------------------------------

    def import_records(self, records: Iterable[Record], *, batch_size: int = importer.DEFAULT_BATCH_SIZE,
                       progress: Callable[[int], None] | None = None) -> ImportResult:
        """Store `records` in ONE transaction, skipping duplicates (same content key or idempotency key).

        If iterating `records` raises, or a record is invalid (InvalidRecordError), or the database
        refuses a write, nothing is stored and the exception propagates. `progress(n)` is called after
        each batch with the number of records in it.
        """
        return importer.import_records(self._engine, records, batch_size=batch_size, progress=progress)

    def iter_records(self, *, sources: Sequence[str] | None = None,
                     kinds: Sequence[str] = m.KINDS) -> Iterator[Record]:
        """Every stored record (of `sources`, if given) as records.py dataclasses, in a stable order:
        kind by kind (comparisons, rankings, ratings, feedback, demonstrations), then insertion order.
        Importing the output into an empty store reproduces this store's records."""
        return self._iter(sources=sources, snapshot_id=None, kinds=kinds)

    def _iter(self, *, sources: Sequence[str] | None, snapshot_id: str | None,
              kinds: Sequence[str]) -> Iterator[Record]:
        def check(conn: Connection) -> str | None:  # unknown names/ids fail here, not at the first next()
            reading.source_ids(conn, sources)
            return self._snapshot_id(conn, snapshot_id)

        full_id = self._read("reading records", check)
        unknown = [k for k in kinds if k not in m.KINDS]
        if unknown:
            raise InvalidRecordError(f"unknown record kinds {unknown}", f"pass some of {', '.join(m.KINDS)}")
        return self._stream(sources, full_id, kinds)

    def _stream(self, sources: Sequence[str] | None, snapshot_id: str | None,
                kinds: Sequence[str]) -> Iterator[Record]:
        try:
            with read_transaction(self._engine, repeatable=True) as conn:
                ids = reading.source_ids(conn, sources)
                yield from reading.iter_records(conn, sources=ids, snapshot_id=snapshot_id, kinds=kinds)
        except SQLAlchemyError as exc:
            raise translate(exc, "reading records") from exc

    def stats(self) -> dict[str, SourceStats]:
        """Per source name: records per kind and distinct prompts, responses and annotators they use."""
        return self._read("computing stats", reading.stats, repeatable=True)

    def totals(self) -> SourceStats:
        """The whole store's counts: records per kind and distinct prompts, responses and annotators."""
        return self._read("computing stats", reading.totals, repeatable=True)

    def table_counts(self) -> dict[str, int]:
        """Rows in every table (a cheap fingerprint of the whole store)."""
        return self._read("counting rows", reading.table_counts, repeatable=True)

    def comparison_rows(self, *, sources: Sequence[str] | None = None,
                        snapshot_id: str | None = None) -> ComparisonRows:
        """Comparisons as columns for aggregation: ids, outcome, annotator name (or None), source name."""
        def run(conn: Connection) -> ComparisonRows:
            return reading.comparison_rows(conn, sources=reading.source_ids(conn, sources),
                                           snapshot_id=self._snapshot_id(conn, snapshot_id))
        return self._read("reading comparisons", run, repeatable=True)

    def ranking_rows(self, *, sources: Sequence[str] | None = None,
                     snapshot_id: str | None = None) -> list[RankingRow]:
        """Rankings for aggregation: prompt id, response ids best first, annotator, source."""
        def run(conn: Connection) -> list[RankingRow]:
            return reading.ranking_rows(conn, sources=reading.source_ids(conn, sources),
                                        snapshot_id=self._snapshot_id(conn, snapshot_id))
        return self._read("reading rankings", run, repeatable=True)

    @staticmethod
    def _snapshot_id(conn: Connection, snapshot_id: str | None) -> str | None:
        return None if snapshot_id is None else snapshots.get(conn, snapshot_id).id

    def response_texts(self, ids: Sequence[str]) -> dict[str, str]:
        """Response id -> text (ids not stored are left out)."""
        return self._read("reading responses", lambda c: reading.texts(c, m.table_of(m.Response), ids))

    def prompt_texts(self, ids: Sequence[str]) -> dict[str, str]:
        """Prompt id -> text (ids not stored are left out)."""
        return self._read("reading prompts", lambda c: reading.texts(c, m.table_of(m.Prompt), ids))

    # ---- aggregation outputs --------------------------------------------------------------------

    def save_aggregation(self, summary: Mapping[str, Any], strengths: Sequence[tuple[str, float]],
                         pair_labels: Sequence[PairLabel], reliability: Sequence[tuple[str, float, int]],
                         ambiguous: Sequence[AmbiguousItem], *,
                         method: str = aggregations.DEFAULT_METHOD) -> int:
        """Save one aggregation run in one transaction; its id. `strengths` are (response id, strength),
        `reliability` (annotator name, reliability, n_labels). Pairs are stored with lo < hi by id (a
        reversed pair is flipped, p_lo -> 1 - p_lo). Ambiguous pairs already queued keep their status
        (their score and run are updated). Non-finite floats in `summary` are stored as null."""
        return self._write("saving the aggregation", lambda c: aggregations.save(
            c, summary, strengths, pair_labels, reliability, ambiguous, method))

    def latest_aggregation(self) -> AggregationRun | None:
        """The newest aggregation run, or None."""
        return self._read("reading aggregation runs", aggregations.latest)

    def aggregation_strengths(self, run_id: int, *, method: str | None = None) -> dict[str, float]:
        """Response id -> strength in one run."""
        return self._read("reading strengths", lambda c: aggregations.strengths(c, run_id, method))

    def aggregation_pair_labels(self, run_id: int) -> list[PairLabel]:
        """Pair soft labels of one run."""
        return self._read("reading pair labels", lambda c: aggregations.pair_labels(c, run_id))

    def aggregation_reliability(self, run_id: int) -> list[AnnotatorScore]:
        """Annotator reliabilities of one run."""
        return self._read("reading reliabilities", lambda c: aggregations.annotator_scores(c, run_id))

    def ambiguity_queue(self, *, status: str | None = "open", limit: int | None = None) -> list[QueueEntry]:
        """Queued ambiguous pairs with `status` ('open', 'resolved', None = all), highest score first."""
        return self._read("reading the ambiguity queue", lambda c: aggregations.queue(c, status=status, limit=limit))

    def resolve_ambiguous(self, item_id: int) -> None:
        """Mark a queued pair resolved; NotFoundError for an unknown id."""
        self._write("resolving a queue item", lambda c: aggregations.resolve(c, item_id))

    # ---- snapshots ------------------------------------------------------------------------------

    def create_snapshot(self, *, sources: Sequence[str] | None = None) -> Snapshot:
        """Freeze the records stored now (of `sources`, if given); the same content returns the same snapshot."""
        try:
            return snapshots.create(self._engine, sources)
        except SQLAlchemyError as exc:
            raise translate(exc, "creating a snapshot") from exc

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        """A snapshot by id or unique id prefix."""
        return self._read("reading a snapshot", lambda c: snapshots.get(c, snapshot_id))

    def list_snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first."""
        return self._read("listing snapshots", snapshots.list_all)

    def verify_snapshot(self, snapshot_id: str) -> None:
        """Recompute the snapshot's hash from its items; SnapshotIntegrityError on any mismatch."""
        self._read("verifying a snapshot", lambda c: snapshots.verify(c, snapshot_id), repeatable=True)

    def snapshot_records(self, snapshot_id: str, *, kinds: Sequence[str] = m.KINDS) -> Iterator[Record]:
        """The records of a snapshot (of `kinds`), in the same order as `iter_records`."""
        return self._iter(sources=None, snapshot_id=snapshot_id, kinds=kinds)

    def snapshot_comparisons(self, snapshot_id: str) -> Iterator[Comparison]:
        """The comparisons of a snapshot."""
        for record in self._iter(sources=None, snapshot_id=snapshot_id, kinds=("comparisons",)):
            if isinstance(record, Comparison):
                yield record

    # ---- model registry -------------------------------------------------------------------------

    def register_model(self, *, name: str, kind: str, path: str, sha256: str, base_model: str,
                       snapshot_id: str | None, metrics: Mapping[str, Any],
                       provenance: Mapping[str, Any]) -> ModelEntry:
        """Register a reward-model artifact; its id is the first 12 hex of `sha256`. Registering the same
        artifact with the same description again returns the stored entry (AlreadyExistsError otherwise)."""
        return self._write("registering a model", lambda c: registry.register(
            c, name=name, kind=kind, path=path, sha256=sha256, base_model=base_model, snapshot_id=snapshot_id,
            metrics=metrics, provenance=provenance))

    def list_models(self) -> list[ModelEntry]:
        """Every registered model, oldest first."""
        return self._read("listing models", registry.list_all)

    def get_model(self, model_id: str) -> ModelEntry:
        """A model by id, unique id prefix or full sha256."""
        return self._read("reading a model", lambda c: registry.get(c, model_id))

    # ---- labeling campaigns and access tokens ---------------------------------------------------

    def add_samples(self, source: str, items: Sequence[samples.Sample]) -> list[list[str]]:
        """Store unlabeled responses (e.g. a policy's samples) with their producing model, in one transaction.

        `items` holds (prompt, [(response, model), ...]); returns the response ids per prompt, ready for
        `create_campaign(pairs=...)`. Already stored prompts and responses are kept as they are.
        """
        return self._write("storing samples", lambda c: samples.add_samples(c, source, items, datetime.now(UTC)))

    def create_campaign(self, name: str, *, sources: Sequence[str] = (), pairs: Sequence[tuple[str, str]] = (),
                        overlap: int = 1, guidelines: str | None = None) -> CampaignInfo:
        """A labeling campaign over every response pair of `sources`' prompts plus explicit response-id pairs."""
        def run(conn: Connection) -> int:
            return labeling.create_campaign(conn, name=name, guidelines=guidelines, overlap=overlap,
                                            sources=sources, pairs=pairs, now=datetime.now(UTC))
        self._write("creating a campaign", run)
        return self.get_campaign(name)

    def submit(self, record: Record, *, scope: str) -> bool:
        """Store one record from an API caller in one transaction, all of it or nothing; True when stored.

        Its idempotency key is scoped to `scope` (the caller); the same key with another record raises
        AlreadyExistsError, a campaign that does not exist NotFoundError."""
        return self._write("storing a record",
                           lambda c: labeling.submit_record(c, record, scope=scope, now=datetime.now(UTC)))

    def list_campaigns(self) -> list[CampaignInfo]:
        """Every campaign with its progress, by name."""
        return self._read("listing campaigns", labeling.list_campaigns)

    def get_campaign(self, name: str) -> CampaignInfo:
        """One campaign with its progress; NotFoundError for an unknown name."""
        return self._read("reading a campaign", lambda c: labeling.get_campaign(c, name))

    def next_pair(self, campaign: str, annotator: str, *, uncertain: Sequence[int] = ()) -> PairToLabel | None:
        """The next pair for `annotator` (below overlap, then `uncertain` ids, then the ambiguity queue)."""
        return self._read("choosing the next pair", lambda c: labeling.next_pair(c, campaign, annotator, uncertain))

    def campaign_pair_texts(self, campaign: str, *, limit: int = 1000) -> list[PairText]:
        """Texts of the campaign's first `limit` pairs."""
        return self._read("reading campaign pairs", lambda c: labeling.pair_texts(c, campaign, limit=limit))

    def labeled_count(self, campaign: str, annotator: str) -> int:
        """Pairs of the campaign `annotator` answered (skips included)."""
        return self._read("counting labels", lambda c: labeling.labeled_count(c, campaign, annotator))

    def record_label(self, campaign: str, *, pair_id: int, annotator: str, left_response_id: str, choice: str,
                     confidence: float | None = None, comment: str | None = None, better: str | None = None,
                     source: str | None = None) -> LabelResult:
        """Store one labeler's answer on a pair in one transaction (once: a repeat returns stored=False).

        The Comparison has response_a = the response shown left; the source defaults to "labeling:CAMPAIGN"."""
        return self._write("storing a label", lambda c: labeling.record_label(
            c, campaign_name=campaign, pair_id=pair_id, annotator=annotator, left_response_id=left_response_id,
            choice=choice, confidence=confidence, comment=comment, better=better,
            source=source or f"labeling:{campaign}", now=datetime.now(UTC)))

    def campaign_labels(self, campaign: str) -> list[CampaignLabelRow]:
        """Every answer of the campaign, oldest first."""
        return self._read("reading campaign labels", lambda c: labeling.campaign_labels(c, campaign))

    def add_token(self, sha256: str, *, kind: str, role: str, name: str, campaign: str | None = None,
                  expires_at: datetime | None = None) -> TokenInfo:
        """Store a credential by the sha256 of its secret (the secret is never stored)."""
        return self._write("storing a token", lambda c: labeling.add_token(
            c, sha256=sha256, kind=kind, role=role, name=name, campaign=campaign, expires_at=expires_at,
            now=datetime.now(UTC)))

    def find_token(self, sha256: str, kinds: Sequence[str]) -> TokenInfo | None:
        """The live credential of one of `kinds` with this hash, or None."""
        return self._read("checking a token", lambda c: labeling.find_token(c, sha256, kinds, datetime.now(UTC)))

    def use_invite(self, invite_sha256: str, session_sha256: str, session_expires: datetime) -> TokenInfo | None:
        """Trade a live invite (once) or an admin's or labeler's api token for a browser session that ends
        when that credential is revoked; None if it is unknown, used, revoked or expired."""
        return self._write("opening a session", lambda c: labeling.use_invite(
            c, invite_sha256, session_sha256, session_expires, datetime.now(UTC)))

    def list_tokens(self) -> list[TokenInfo]:
        """Every credential (never a secret), oldest first."""
        return self._read("listing tokens", labeling.list_tokens)

    def revoke_token(self, token_id: int) -> None:
        """Revoke a credential by id."""
        self._write("revoking a token", lambda c: labeling.revoke_token(c, token_id, datetime.now(UTC)))


__all__ = [
    "AggregationRun",
    "AmbiguousItem",
    "AnnotatorScore",
    "CampaignInfo",
    "CampaignLabelRow",
    "ComparisonRows",
    "ImportResult",
    "LabelResult",
    "ModelEntry",
    "PairLabel",
    "PairText",
    "PairToLabel",
    "QueueEntry",
    "RankingRow",
    "Snapshot",
    "SourceStats",
    "StorageError",
    "Store",
    "TokenInfo",
]
