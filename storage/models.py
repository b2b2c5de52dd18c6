"""The SQL schema as typed SQLAlchemy ORM models (the migrations in storage/migrations create it).

Ids of prompts and responses are content hashes (storage/hashing.py); every label (comparison,
ranking, rating, feedback, demonstration) carries a unique content-hash `key` (dedup) and an
optional unique `idempotency_key` (retried imports; the ingestion API keeps its callers' keys in
`api_idempotency_keys`). Hash columns use the "C" collation on PostgreSQL so ORDER BY sorts them
bytewise there as on SQLite (snapshot hashes depend on it).
Timestamps are stored in UTC and read back timezone-aware.

Nothing outside storage/ sees these classes: the store returns the frozen dataclasses of
storage/records.py and storage/types.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names, so later migrations (and SQLite batch mode) can address them."""

KINDS: Final = ("comparisons", "rankings", "ratings", "feedback", "demonstrations")
"""The record kinds, in the order the store reads, counts and hashes them (also their table names)."""

OUTCOMES_SQL: Final = "'A', 'B', 'tie', 'both_bad'"
MODEL_KINDS: Final = ("personal", "federated", "imported")
QUEUE_STATUSES: Final = ("open", "resolved")


def hash_type() -> TypeEngine[str]:
    """A 64-char lowercase hex SHA-256, compared bytewise on every backend."""
    return String(64).with_variant(String(64, collation="C"), "postgresql")


def json_type() -> TypeEngine[Any]:
    """JSON; JSONB on PostgreSQL."""
    return JSON().with_variant(JSONB(), "postgresql")


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime. Naive datetimes are taken as UTC; others are converted to UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = to_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; a naive one is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sqlite_timestamp(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DATETIME stores for `value` (in UTC), for raw DBAPI inserts."""
    v = to_utc(value)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond:06d}")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# ---- who and where --------------------------------------------------------------------------


class Source(Base):
    """A named origin of records: a dataset file, an app, a campaign's export."""

    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Campaign(Base):
    """A labeling campaign: guidelines and how many annotators see each item."""

    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    guidelines: Mapped[str | None] = mapped_column(Text)
    overlap: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Annotator(Base):
    """Someone (or something) who labels: kind 'human' unless said otherwise."""

    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(Text, server_default="human")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# ---- texts ----------------------------------------------------------------------------------


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[str] = mapped_column(hash_type(), primary_key=True)  # sha256(text)
    text: Mapped[str] = mapped_column(Text)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))  # source of the first import
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Response(Base):
    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(hash_type(), primary_key=True)  # sha256(prompt_id + "\0" + text)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)  # the model that produced it, as first imported
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# ---- labels ---------------------------------------------------------------------------------


class LabelColumns:
    """Columns every label table has."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True, sort_order=-2)
    key: Mapped[str] = mapped_column(hash_type(), unique=True, sort_order=-1)  # content hash, storage/hashing.py
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), index=True)
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"), index=True)
    subset: Mapped[str | None] = mapped_column(Text)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    external_id: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Text)  # unique where set: label_indexes()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


def label_indexes(table: str) -> tuple[Index, ...]:
    """A label table's unique index on idempotency_key, partial (NULLs, the common case, are not indexed)."""
    where = sql_text("idempotency_key IS NOT NULL")
    return (Index(f"uq_{table}_idempotency_key", "idempotency_key", unique=True, sqlite_where=where,
                  postgresql_where=where),)


_LEGACY_SET: Final = sql_text("legacy_key IS NOT NULL")


class Comparison(LabelColumns, Base):
    __tablename__ = "comparisons"
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_a_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    response_b_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    outcome: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Double)
    comment: Mapped[str | None] = mapped_column(Text)
    agreement: Mapped[float | None] = mapped_column(Double)
    # migration 0004 (comparison keys became symmetric, storage/hashing.py): `legacy_key` is the key a
    # row had before it, where 0004 changed it (snapshots made before 0004 list that key);
    # `duplicate_of` marks a row 0004 found to repeat another row's vote with the sides swapped: the
    # key of that row. Such a row keeps its old key, is read only through the snapshots that list it
    # and counts nowhere else. Both are NULL for every row stored since 0004.
    legacy_key: Mapped[str | None] = mapped_column(hash_type())
    duplicate_of: Mapped[str | None] = mapped_column(hash_type())
    __table_args__ = (
        *label_indexes("comparisons"),
        Index("uq_comparisons_legacy_key", "legacy_key", unique=True, sqlite_where=_LEGACY_SET,
              postgresql_where=_LEGACY_SET),
        CheckConstraint(f"outcome IN ({OUTCOMES_SQL})", name="outcome"),
        CheckConstraint("response_a_id <> response_b_id", name="distinct_responses"),
        CheckConstraint("confidence IS NULL OR (confidence >= 0 AND confidence <= 1)", name="confidence"),
        CheckConstraint("agreement IS NULL OR (agreement >= 0 AND agreement <= 1)", name="agreement"),
    )


class Ranking(LabelColumns, Base):
    __tablename__ = "rankings"
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    __table_args__ = label_indexes("rankings")


class RankingItem(Base):
    __tablename__ = "ranking_items"
    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # 0 = best
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    __table_args__ = (PrimaryKeyConstraint("ranking_id", "position"),)


class Rating(LabelColumns, Base):
    __tablename__ = "ratings"
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    value: Mapped[float] = mapped_column(Double)
    scale_min: Mapped[float] = mapped_column(Double)
    scale_max: Mapped[float] = mapped_column(Double)
    comment: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        *label_indexes("ratings"),
        CheckConstraint("scale_min < scale_max AND value >= scale_min AND value <= scale_max", name="value_on_scale"),
    )


class Feedback(LabelColumns, Base):
    __tablename__ = "feedback"
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    thumbs_up: Mapped[bool]
    comment: Mapped[str | None] = mapped_column(Text)
    __table_args__ = label_indexes("feedback")


class Demonstration(LabelColumns, Base):
    __tablename__ = "demonstrations"
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)  # annotator_id is the author
    __table_args__ = label_indexes("demonstrations")


# ---- snapshots and the model registry -------------------------------------------------------


class Snapshot(Base):
    """An immutable dataset: id = sha256 over its item lines (storage/hashing.py snapshot_line)."""

    __tablename__ = "snapshots"
    id: Mapped[str] = mapped_column(hash_type(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    filter: Mapped[dict[str, Any]] = mapped_column(json_type())
    counts: Mapped[dict[str, int]] = mapped_column(json_type())


class SnapshotItem(Base):
    __tablename__ = "snapshot_items"
    snapshot_id: Mapped[str] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)
    item_key: Mapped[str] = mapped_column(hash_type())
    __table_args__ = (
        PrimaryKeyConstraint("snapshot_id", "kind", "item_key"),
        CheckConstraint(f"kind IN ({_quoted(KINDS)})", name="kind"),
    )


class RegisteredModel(Base):
    """A reward model artifact: where it is, what it was trained on, how good it is."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(Text, primary_key=True)  # first 12 hex of sha256
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(hash_type(), unique=True)
    base_model: Mapped[str] = mapped_column(Text)
    snapshot_id: Mapped[str | None] = mapped_column(ForeignKey("snapshots.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(json_type())
    provenance: Mapped[dict[str, Any]] = mapped_column(json_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (CheckConstraint(f"kind IN ({_quoted(MODEL_KINDS)})", name="kind"),)


# ---- aggregation outputs --------------------------------------------------------------------


class AggregationRun(Base):
    __tablename__ = "aggregation_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    summary: Mapped[dict[str, Any]] = mapped_column(json_type())


class ResponseStrength(Base):
    __tablename__ = "response_strengths"
    run_id: Mapped[int] = mapped_column(ForeignKey("aggregation_runs.id", ondelete="CASCADE"))
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    strength: Mapped[float] = mapped_column(Double)
    method: Mapped[str] = mapped_column(Text)
    __table_args__ = (PrimaryKeyConstraint("run_id", "method", "response_id"),)


class PairLabel(Base):
    __tablename__ = "pair_labels"
    run_id: Mapped[int] = mapped_column(ForeignKey("aggregation_runs.id", ondelete="CASCADE"))
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))
    response_lo_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    response_hi_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    p_lo: Mapped[float | None] = mapped_column(Double)  # None when every vote said both_bad
    n_votes: Mapped[int] = mapped_column(Integer)
    n_ties: Mapped[int] = mapped_column(Integer)
    n_both_bad: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        PrimaryKeyConstraint("run_id", "response_lo_id", "response_hi_id"),
        CheckConstraint("response_lo_id < response_hi_id", name="lo_below_hi"),
        CheckConstraint("p_lo IS NULL OR (p_lo >= 0 AND p_lo <= 1)", name="p_lo"),
    )


class AnnotatorReliability(Base):
    __tablename__ = "annotator_reliability"
    run_id: Mapped[int] = mapped_column(ForeignKey("aggregation_runs.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    reliability: Mapped[float] = mapped_column(Double)
    n_labels: Mapped[int] = mapped_column(Integer)
    __table_args__ = (PrimaryKeyConstraint("run_id", "annotator_id"),)


class AmbiguityItem(Base):
    """A pair a human should look at again; re-running aggregation updates score, keeps status."""

    __tablename__ = "ambiguity_queue"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))
    response_lo_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    response_hi_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    reason: Mapped[str] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Double)
    status: Mapped[str] = mapped_column(Text, server_default="open")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("aggregation_runs.id", ondelete="SET NULL"))  # last run
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("prompt_id", "response_lo_id", "response_hi_id", "reason"),
        CheckConstraint(f"status IN ({_quoted(QUEUE_STATUSES)})", name="status"),
        Index(None, "status", "score"),
    )


# ---- labeling (migrations 0002, 0003) -------------------------------------------------------

TOKEN_KINDS: Final = ("api", "invite", "session")
TOKEN_ROLES: Final = ("admin", "scorer", "labeler")
LABEL_CHOICES: Final = ("A", "B", "tie", "both_bad", "skip")


class CampaignPair(Base):
    """A pair of responses to one prompt that a campaign asks its labelers to compare (lo < hi by id)."""

    __tablename__ = "campaign_pairs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))
    response_lo_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    response_hi_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("campaign_id", "response_lo_id", "response_hi_id"),
        CheckConstraint("response_lo_id < response_hi_id", name="lo_below_hi"),
    )


class CampaignLabel(Base):
    """One labeler's answer on one campaign pair (at most one each): the side shown left, the choice
    relative to what was shown (A = left), and the keys of the comparison/demonstration it stored."""

    __tablename__ = "campaign_labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("campaign_pairs.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    left_response_id: Mapped[str] = mapped_column(ForeignKey("responses.id"))
    choice: Mapped[str] = mapped_column(Text)
    comparison_key: Mapped[str | None] = mapped_column(hash_type())
    demonstration_key: Mapped[str | None] = mapped_column(hash_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("pair_id", "annotator_id"),
        CheckConstraint(f"choice IN ({_quoted(LABEL_CHOICES)})", name="choice"),
    )


class AccessToken(Base):
    """A credential of the HTTP server, stored as the sha256 of the secret (never the secret):
    api tokens (bearer), one-time invite tokens of a campaign, and browser sessions."""

    __tablename__ = "access_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(hash_type(), unique=True)
    kind: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)  # who holds it: the labeler's annotator name
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # migration 0003: the api token or invite a session was made from (revoking it ends the session);
    # NULL for api tokens and invites, and for sessions made before 0003 (they end at their expiry)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("access_tokens.id", ondelete="CASCADE"),
                                                  index=True)
    __table_args__ = (
        CheckConstraint(f"kind IN ({_quoted(TOKEN_KINDS)})", name="kind"),
        CheckConstraint(f"role IN ({_quoted(TOKEN_ROLES)})", name="role"),
    )


class ApiIdempotencyKey(Base):
    """An idempotency key of the ingestion API (migration 0003) and the record it names.

    `key` is scoped to its caller ("ROLE:NAME/KEY", storage.labeling.scoped_idempotency_key), so it
    never meets the unscoped keys of file imports (those stay in the label tables' idempotency_key).
    `fingerprint` is the sha256 of everything the caller sent but the key: the same key sent again
    is a retry only with the same fingerprint. It is NULL for the keys 0003 moved here from label
    rows, which compare by kind and content key as they did before."""

    __tablename__ = "api_idempotency_keys"
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)  # the label table of the record: one of KINDS
    content_key: Mapped[str] = mapped_column(hash_type())  # the record's `key` in that table
    fingerprint: Mapped[str | None] = mapped_column(hash_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (CheckConstraint(f"kind IN ({_quoted(KINDS)})", name="kind"),)


TABLES: Final = tuple(Base.metadata.sorted_tables)
"""Every table, parents before children."""


def table_of(model: type[Base]) -> Table:
    """The Core table of an ORM model, typed as a Table (for Core statements)."""
    return cast(Table, model.__table__)
