"""Labeling: campaign pairs, campaign labels (sides shown, choice) and access tokens (hashed).

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02

Self-contained like 0001: types spelled out here; tests check that the migrated schema equals the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _hash(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
                     nullable=nullable)


def _ts(name: str = "created_at", *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _fk(table: str, column: str, target: str, *, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    ref = target.partition(".")[0]
    return sa.ForeignKeyConstraint([column], [target], name=op.f(f"fk_{table}_{column}_{ref}"), ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "campaign_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        _hash("prompt_id"),
        _hash("response_lo_id"),
        _hash("response_hi_id"),
        _ts(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_pairs")),
        _fk("campaign_pairs", "campaign_id", "campaigns.id", ondelete="CASCADE"),
        _fk("campaign_pairs", "prompt_id", "prompts.id"),
        _fk("campaign_pairs", "response_lo_id", "responses.id"),
        _fk("campaign_pairs", "response_hi_id", "responses.id"),
        sa.UniqueConstraint("campaign_id", "response_lo_id", "response_hi_id",
                            name=op.f("uq_campaign_pairs_campaign_id_response_lo_id_response_hi_id")),
        sa.CheckConstraint("response_lo_id < response_hi_id", name=op.f("ck_campaign_pairs_lo_below_hi")),
    )
    op.create_table(
        "campaign_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pair_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        _hash("left_response_id"),
        sa.Column("choice", sa.Text(), nullable=False),
        _hash("comparison_key", nullable=True),
        _hash("demonstration_key", nullable=True),
        _ts(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_labels")),
        _fk("campaign_labels", "pair_id", "campaign_pairs.id", ondelete="CASCADE"),
        _fk("campaign_labels", "annotator_id", "annotators.id"),
        _fk("campaign_labels", "left_response_id", "responses.id"),
        sa.UniqueConstraint("pair_id", "annotator_id", name=op.f("uq_campaign_labels_pair_id_annotator_id")),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie', 'both_bad', 'skip')", name=op.f("ck_campaign_labels_choice")),
    )
    op.create_index(op.f("ix_campaign_labels_annotator_id"), "campaign_labels", ["annotator_id"])
    op.create_table(
        "access_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        _hash("sha256"),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        _ts(),
        _ts("expires_at", nullable=True),
        _ts("used_at", nullable=True),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_tokens")),
        _fk("access_tokens", "campaign_id", "campaigns.id", ondelete="CASCADE"),
        sa.UniqueConstraint("sha256", name=op.f("uq_access_tokens_sha256")),
        sa.CheckConstraint("kind IN ('api', 'invite', 'session')", name=op.f("ck_access_tokens_kind")),
        sa.CheckConstraint("role IN ('admin', 'scorer', 'labeler')", name=op.f("ck_access_tokens_role")),
    )


def downgrade() -> None:
    for table in ("access_tokens", "campaign_labels", "campaign_pairs"):
        op.drop_table(table)
