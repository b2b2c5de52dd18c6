"""Sessions know the token they came from; the ingestion API's idempotency keys get their own table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03

- access_tokens.parent_id: the api token or invite a browser session was made from, so revoking
  it ends its sessions. Sessions made before this revision have none and end at their expiry.
- api_idempotency_keys: the ingestion API's keys (scoped "ROLE:NAME/KEY") with the record each
  names and a fingerprint of what was sent. Keys that look scoped are moved here from the label
  tables' idempotency_key (a file import's key can only stay there) with a NULL fingerprint, which
  means "compare by kind and content key", as the API did when it stored them.

Self-contained like 0001: types spelled out here; tests check that the migrated schema equals the models.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

KINDS = ("comparisons", "rankings", "ratings", "feedback", "demonstrations")
SCOPED_KEY = re.compile(r"(?:admin|labeler|scorer):[^/]+/.+", re.DOTALL)
"""A key the ingestion API stored (storage.labeling.scoped_idempotency_key): ROLE:NAME/KEY."""
_CHUNK = 500


def _hash(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
                     nullable=nullable)


def _keys_table() -> sa.TableClause:
    return sa.table("api_idempotency_keys", sa.column("key", sa.Text()), sa.column("kind", sa.Text()),
                    sa.column("content_key", sa.Text()), sa.column("fingerprint", sa.Text()),
                    sa.column("created_at", sa.DateTime(timezone=True)))


def _label_table(kind: str) -> sa.TableClause:
    return sa.table(kind, sa.column("key", sa.Text()), sa.column("idempotency_key", sa.Text()),
                    sa.column("created_at", sa.DateTime(timezone=True)))


def upgrade() -> None:
    with op.batch_alter_table("access_tokens") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_access_tokens_parent_id_access_tokens"), "access_tokens",
                                 ["parent_id"], ["id"], ondelete="CASCADE")
        batch.create_index(op.f("ix_access_tokens_parent_id"), ["parent_id"])
    op.create_table(
        "api_idempotency_keys",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        _hash("content_key"),
        _hash("fingerprint", nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_api_idempotency_keys")),
        sa.CheckConstraint(f"kind IN ({', '.join(repr(k) for k in KINDS)})",
                           name=op.f("ck_api_idempotency_keys_kind")),
    )
    _move_api_keys()


def _move_api_keys() -> None:
    """Move the scoped keys from the label rows into api_idempotency_keys (the first of a key, by KINDS)."""
    conn = op.get_bind()
    keys = _keys_table()
    moved: set[str] = set()
    for kind in KINDS:
        t = _label_table(kind)
        rows = conn.execute(sa.select(t.c.key, t.c.idempotency_key)
                            .where(t.c.idempotency_key.is_not(None), t.c.idempotency_key.like("%:%/%"))).all()
        content_keys = []
        for content_key, key in rows:
            if SCOPED_KEY.fullmatch(key) and key not in moved:
                moved.add(key)
                content_keys.append(content_key)
        for start in range(0, len(content_keys), _CHUNK):
            chunk = content_keys[start:start + _CHUNK]
            conn.execute(sa.insert(keys).from_select(
                ["key", "kind", "content_key", "fingerprint", "created_at"],
                sa.select(t.c.idempotency_key, sa.literal(kind), t.c.key, sa.null(), t.c.created_at)
                .where(t.c.key.in_(chunk))))
            conn.execute(sa.update(t).where(t.c.key.in_(chunk)).values(idempotency_key=None))


def downgrade() -> None:
    """Put each record's first API key back on its row (if row and key are free); the rest are lost."""
    conn = op.get_bind()
    keys = _keys_table()
    for kind in KINDS:
        t = _label_table(kind)
        first: dict[str, str] = {}
        for key, content_key in conn.execute(sa.select(keys.c.key, keys.c.content_key)
                                             .where(keys.c.kind == kind).order_by(keys.c.key)):
            first.setdefault(content_key, key)
        taken = set(conn.execute(sa.select(t.c.idempotency_key)
                                 .where(t.c.idempotency_key.is_not(None))).scalars())
        for content_key, key in first.items():
            if key not in taken:  # a file import may have stored the same key since
                conn.execute(sa.update(t).where(t.c.key == content_key, t.c.idempotency_key.is_(None))
                             .values(idempotency_key=key))
    op.drop_table("api_idempotency_keys")
    with op.batch_alter_table("access_tokens") as batch:
        batch.drop_index(op.f("ix_access_tokens_parent_id"))
        batch.drop_constraint(op.f("fk_access_tokens_parent_id_access_tokens"), type_="foreignkey")
        batch.drop_column("parent_id")
