"""The initial schema: sources, campaigns, annotators, texts, labels, snapshots, registry, aggregation.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Self-contained on purpose (no imports from storage.models, which will keep changing): types are
spelled out here, and tests check that the migrated schema equals the models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

KINDS = ("comparisons", "rankings", "ratings", "feedback", "demonstrations")
_HASH_TABLES = ("prompts", "responses", "snapshots")  # tables whose id is a sha256 hex


def _hash() -> sa.types.TypeEngine[str]:
    return sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str = "created_at", *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _double(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.Double(), nullable=nullable)


def _int(name: str, *, nullable: bool = False, default: str | None = None) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), nullable=nullable, server_default=default)


def _table(name: str, *columns: sa.Column[object], pk: tuple[str, ...] = ("id",),
           unique: tuple[tuple[str, ...], ...] = (), fks: dict[str, str] | None = None,
           nullable_fks: tuple[str, ...] = (), ondelete: dict[str, str] | None = None,
           checks: dict[str, str] | None = None, indexes: tuple[tuple[str, ...], ...] = ()) -> None:
    """CREATE TABLE with every constraint named like storage.models.NAMING_CONVENTION names it."""
    fk_columns = []
    for column, target in (fks or {}).items():
        ref_table = target.partition(".")[0]
        type_: sa.types.TypeEngine[Any] = _hash() if ref_table in _HASH_TABLES else sa.Integer()
        fk = sa.ForeignKey(target, name=op.f(f"fk_{name}_{column}_{ref_table}"), ondelete=(ondelete or {}).get(column))
        fk_columns.append(sa.Column(column, type_, fk, nullable=column in nullable_fks))
    op.create_table(
        name,
        *columns,
        *fk_columns,
        sa.PrimaryKeyConstraint(*pk, name=op.f(f"pk_{name}")),
        *(sa.UniqueConstraint(*cols, name=op.f(f"uq_{name}_{'_'.join(cols)}")) for cols in unique),
        *(sa.CheckConstraint(sql, name=op.f(f"ck_{name}_{ck}")) for ck, sql in (checks or {}).items()),
    )
    for cols in indexes:
        op.create_index(op.f(f"ix_{name}_{'_'.join(cols)}"), name, list(cols))


def _named_table(name: str, *columns: sa.Column[object]) -> None:
    """sources, campaigns, annotators: an int id and a unique name."""
    _table(name, sa.Column("id", sa.Integer(), nullable=False), _text("name", nullable=False), *columns, _ts(),
           unique=(("name",),))


_LABEL_FKS = {"source_id": "sources.id", "annotator_id": "annotators.id", "campaign_id": "campaigns.id"}


def _label_table(name: str, *columns: sa.Column[object], fks: dict[str, str],
                 checks: dict[str, str] | None = None) -> None:
    """A label table: id, key, the kind's own columns, then who/where/when; indexed like the models."""
    _table(
        name,
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("key", _hash(), nullable=False),
        *columns,
        _text("subset"),
        _text("external_id"),
        _text("idempotency_key"),
        _ts(),
        fks={**fks, **_LABEL_FKS},
        nullable_fks=("annotator_id", "campaign_id"),
        unique=(("key",),),
        checks=checks,
        indexes=(("annotator_id",), ("prompt_id",), ("source_id",)),
    )
    where = sa.text("idempotency_key IS NOT NULL")  # unique where set; NULLs (most rows) are not indexed
    op.create_index(op.f(f"uq_{name}_idempotency_key"), name, ["idempotency_key"], unique=True,
                    sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    # ---- who and where ---------------------------------------------------------------------
    _named_table("sources")
    _named_table("campaigns", _text("guidelines"), _int("overlap", default="1"))
    _named_table("annotators", sa.Column("kind", sa.Text(), server_default="human", nullable=False))

    # ---- texts -----------------------------------------------------------------------------
    _table("prompts", sa.Column("id", _hash(), nullable=False), _text("text", nullable=False), _ts(),
           fks={"source_id": "sources.id"})
    _table("responses", sa.Column("id", _hash(), nullable=False), _text("text", nullable=False), _text("model"),
           _ts(), fks={"prompt_id": "prompts.id"}, indexes=(("prompt_id",),))

    # ---- labels ----------------------------------------------------------------------------
    _label_table(
        "comparisons",
        _text("outcome", nullable=False),
        _double("confidence", nullable=True),
        _text("comment"),
        _double("agreement", nullable=True),
        fks={"prompt_id": "prompts.id", "response_a_id": "responses.id", "response_b_id": "responses.id"},
        checks={
            "outcome": "outcome IN ('A', 'B', 'tie', 'both_bad')",
            "distinct_responses": "response_a_id <> response_b_id",
            "confidence": "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)",
            "agreement": "agreement IS NULL OR (agreement >= 0 AND agreement <= 1)",
        },
    )
    _label_table("rankings", fks={"prompt_id": "prompts.id"})
    _table("ranking_items", _int("position"), pk=("ranking_id", "position"),
           fks={"ranking_id": "rankings.id", "response_id": "responses.id"}, ondelete={"ranking_id": "CASCADE"})
    _label_table(
        "ratings",
        _double("value"),
        _double("scale_min"),
        _double("scale_max"),
        _text("comment"),
        fks={"prompt_id": "prompts.id", "response_id": "responses.id"},
        checks={"value_on_scale": "scale_min < scale_max AND value >= scale_min AND value <= scale_max"},
    )
    _label_table(
        "feedback",
        sa.Column("thumbs_up", sa.Boolean(), nullable=False),
        _text("comment"),
        fks={"prompt_id": "prompts.id", "response_id": "responses.id"},
    )
    _label_table("demonstrations", _text("text", nullable=False), fks={"prompt_id": "prompts.id"})

    # ---- snapshots and the model registry --------------------------------------------------
    _table("snapshots", sa.Column("id", _hash(), nullable=False), _ts(),
           sa.Column("filter", _json(), nullable=False), sa.Column("counts", _json(), nullable=False))
    _table("snapshot_items", _text("kind", nullable=False), sa.Column("item_key", _hash(), nullable=False),
           pk=("snapshot_id", "kind", "item_key"), fks={"snapshot_id": "snapshots.id"},
           ondelete={"snapshot_id": "CASCADE"},
           checks={"kind": "kind IN (" + ", ".join(f"'{k}'" for k in KINDS) + ")"})
    _table(
        "models",
        _text("id", nullable=False),
        _text("name", nullable=False),
        _text("kind", nullable=False),
        _text("path", nullable=False),
        sa.Column("sha256", _hash(), nullable=False),
        _text("base_model", nullable=False),
        sa.Column("metrics", _json(), nullable=False),
        sa.Column("provenance", _json(), nullable=False),
        _ts(),
        fks={"snapshot_id": "snapshots.id"},
        nullable_fks=("snapshot_id",),
        unique=(("sha256",),),
        checks={"kind": "kind IN ('personal', 'federated', 'imported')"},
    )

    # ---- aggregation outputs ---------------------------------------------------------------
    _table("aggregation_runs", sa.Column("id", sa.Integer(), nullable=False), _ts(),
           sa.Column("summary", _json(), nullable=False))
    run_fk = {"run_id": "aggregation_runs.id"}
    _table("response_strengths", _double("strength"), _text("method", nullable=False),
           pk=("run_id", "method", "response_id"), fks={**run_fk, "response_id": "responses.id"},
           ondelete={"run_id": "CASCADE"})
    _table(
        "pair_labels",
        _double("p_lo", nullable=True),
        _int("n_votes"),
        _int("n_ties"),
        _int("n_both_bad"),
        pk=("run_id", "response_lo_id", "response_hi_id"),
        fks={**run_fk, "prompt_id": "prompts.id", "response_lo_id": "responses.id",
             "response_hi_id": "responses.id"},
        ondelete={"run_id": "CASCADE"},
        checks={"lo_below_hi": "response_lo_id < response_hi_id",
                "p_lo": "p_lo IS NULL OR (p_lo >= 0 AND p_lo <= 1)"},
    )
    _table("annotator_reliability", _double("reliability"), _int("n_labels"), pk=("run_id", "annotator_id"),
           fks={**run_fk, "annotator_id": "annotators.id"}, ondelete={"run_id": "CASCADE"})
    _table(
        "ambiguity_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("reason", nullable=False),
        _double("score"),
        sa.Column("status", sa.Text(), server_default="open", nullable=False),
        _ts(),
        _ts("resolved_at", nullable=True),
        fks={"prompt_id": "prompts.id", "response_lo_id": "responses.id", "response_hi_id": "responses.id",
             **run_fk},
        nullable_fks=("run_id",),
        ondelete={"run_id": "SET NULL"},
        unique=(("prompt_id", "response_lo_id", "response_hi_id", "reason"),),
        checks={"status": "status IN ('open', 'resolved')"},
        indexes=(("status", "score"),),
    )


def downgrade() -> None:
    for table in ("ambiguity_queue", "annotator_reliability", "pair_labels", "response_strengths",
                  "aggregation_runs", "models", "snapshot_items", "snapshots", "demonstrations", "feedback",
                  "ratings", "ranking_items", "rankings", "comparisons", "responses", "prompts",
                  "annotators", "campaigns", "sources"):
        op.drop_table(table)
