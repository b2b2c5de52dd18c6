"""Comparison keys become symmetric: a vote stored twice, once per side, counts once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-01-04

The key of a comparison (storage/hashing.py) is now the key of its vote: the two responses in id
order and the outcome as seen from the first ("A" <-> "B" when the row holds them the other way
round, "tie" and "both_bad" as they are), so a comparison imported again with its sides swapped is
a duplicate. A row stored with the lower response id first already has that key; this revision
rekeys the others and deletes nothing:

- `comparisons.legacy_key` (unique where set) keeps the key a rekeyed row had before. Snapshots made
  before 0004 list that key, and their items are never rewritten, so every snapshot keeps its id (the
  one model cards record), verifies, and reads back the same rows (storage/reading.py label_filter).
- A vote stored twice, one row per side (same prompt, responses, source, annotator, external_id and
  campaign, the outcome mirrored), can give its key to one row only: the one stored with the lower
  response id first, which holds it already (whichever of the two was imported first), stays the
  vote's row. The other row is neither deleted (that would lose its own confidence, comment and
  created_at and break the snapshots that list it) nor rekeyed (that would change those snapshots'
  ids): it keeps its old key, with nothing else changed, and gets `comparisons.duplicate_of` = the
  vote's key. It then counts in no total, export, aggregation or new snapshot, so the vote counts
  once, while an old snapshot that lists it still reads it back as it did.
- What names a comparison by key to find its vote moves to the vote's key: campaign_labels.
  comparison_key and api_idempotency_keys.content_key (kind comparisons), so a label names the row
  that counts and an ingestion-API retry of a rekeyed record is still recognized as a retry.
  snapshot_items are not touched. Aggregation outputs and the ambiguity queue name responses, not
  comparisons: a saved run keeps the numbers it computed; the next run counts each vote once.

Downgrade puts the old keys back (a row stored since 0004 with the higher id first gets the key the
old rule gives it), moves those references back with them (one that named a repeated row keeps
naming the vote's other row) and drops both columns: repeated votes count twice again. It refuses
while a snapshot made since 0004 lists a comparison by a key that would go away.

Self-contained like 0001: the key rules as of this revision are spelled out here, not imported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from hashlib import sha256
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

MIRRORED = {"A": "B", "B": "A", "tie": "tie", "both_bad": "both_bad"}
_SET = sa.text("legacy_key IS NOT NULL")
_PAGE = 5000
_CHUNK = 500


def _hash(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
                     nullable=nullable)


_comparisons = sa.table("comparisons", *(sa.column(name) for name in (
    "id", "key", "prompt_id", "response_a_id", "response_b_id", "outcome", "source_id", "annotator_id",
    "campaign_id", "external_id", "legacy_key", "duplicate_of")))
_c = _comparisons.c
_BY_ID = _c.id == sa.bindparam("b_id")


def _key(row: Any, names: dict[str, dict[int | None, str | None]], *, symmetric: bool) -> str:
    """The row's key by the rule of 0004 (`symmetric`) or by the one before (responses as stored)."""
    a, b, outcome = row.response_a_id, row.response_b_id, row.outcome
    if symmetric and a > b:
        a, b, outcome = b, a, MIRRORED[outcome]
    fields = [names["sources"][row.source_id], outcome, names["annotators"][row.annotator_id],
              row.external_id, names["campaigns"][row.campaign_id]]
    text = "comparison:" + row.prompt_id + a + b + json.dumps(fields, separators=(",", ":"))
    return sha256(text.encode()).hexdigest()


def _names(conn: sa.Connection) -> dict[str, dict[int | None, str | None]]:
    out: dict[str, dict[int | None, str | None]] = {}
    for table in ("sources", "annotators", "campaigns"):
        t = sa.table(table, sa.column("id"), sa.column("name"))
        out[table] = {None: None, **{id_: name for id_, name in conn.execute(sa.select(t.c.id, t.c.name))}}
    return out


def _swapped_rows(conn: sa.Connection, *where: sa.ColumnElement[bool]) -> Iterator[Sequence[Any]]:
    """Pages of the comparisons stored with the higher response id first (and `where`), by id."""
    last = 0
    while True:
        rows = conn.execute(
            sa.select(_c.id, _c.key, _c.prompt_id, _c.response_a_id, _c.response_b_id, _c.outcome,
                      _c.source_id, _c.annotator_id, _c.campaign_id, _c.external_id)
            .where(_c.response_a_id > _c.response_b_id, _c.id > last, *where).order_by(_c.id)
            .limit(_PAGE)).all()
        if not rows:
            return
        yield rows
        last = rows[-1].id


def _move_references(conn: sa.Connection, old: sa.ColumnElement[Any], new: sa.ColumnElement[Any]) -> None:
    """Where a label or an API key names a comparison by its `old` column, name it by its `new` one."""
    labels = sa.table("campaign_labels", sa.column("comparison_key"))
    keys = sa.table("api_idempotency_keys", sa.column("kind"), sa.column("content_key"))
    moved = sa.select(old).where(old.is_not(None), new.is_not(None))
    label_key, content_key = labels.c.comparison_key, keys.c.content_key
    conn.execute(sa.update(labels).where(label_key.in_(moved))
                 .values(comparison_key=sa.select(new).where(old == label_key).scalar_subquery()))
    conn.execute(sa.update(keys).where(keys.c.kind == "comparisons", content_key.in_(moved))
                 .values(content_key=sa.select(new).where(old == content_key).scalar_subquery()))


def upgrade() -> None:
    op.add_column("comparisons", _hash("legacy_key", nullable=True))
    op.add_column("comparisons", _hash("duplicate_of", nullable=True))
    op.create_index(op.f("uq_comparisons_legacy_key"), "comparisons", ["legacy_key"], unique=True,
                    sqlite_where=_SET, postgresql_where=_SET)
    conn = op.get_bind()
    names = _names(conn)
    for rows in _swapped_rows(conn):
        vote = {row.id: _key(row, names, symmetric=True) for row in rows}
        keys = list(vote.values())
        taken: set[str] = set()  # held by the vote's row written lower id first: a vote stored twice
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            taken.update(conn.execute(sa.select(_c.key).where(_c.key.in_(chunk))).scalars())
        rekeyed = [{"b_id": r.id, "b_key": vote[r.id], "b_old": r.key} for r in rows
                   if vote[r.id] not in taken]
        repeats = [{"b_id": r.id, "b_vote": vote[r.id]} for r in rows if vote[r.id] in taken]
        if rekeyed:
            conn.execute(sa.update(_comparisons).where(_BY_ID)
                         .values(key=sa.bindparam("b_key"), legacy_key=sa.bindparam("b_old")), rekeyed)
        if repeats:
            conn.execute(sa.update(_comparisons).where(_BY_ID).values(duplicate_of=sa.bindparam("b_vote")),
                         repeats)
    _move_references(conn, _c.legacy_key, _c.key)
    _move_references(conn, _c.key, _c.duplicate_of)


def downgrade() -> None:
    """The keys of the rule before 0004 back on every comparison; the references with them."""
    conn = op.get_bind()
    names = _names(conn)
    # rows stored since 0004 with the higher id first: the old rule's key into legacy_key, as 0004 left it
    for rows in _swapped_rows(conn, _c.legacy_key.is_(None), _c.duplicate_of.is_(None)):
        conn.execute(sa.update(_comparisons).where(_BY_ID).values(legacy_key=sa.bindparam("b_old")),
                     [{"b_id": r.id, "b_old": _key(r, names, symmetric=False)} for r in rows])
    items = sa.table("snapshot_items", sa.column("snapshot_id"), sa.column("kind"), sa.column("item_key"))
    listed = conn.execute(sa.select(items.c.snapshot_id).where(
        items.c.kind == "comparisons",
        items.c.item_key.in_(sa.select(_c.key).where(_c.legacy_key.is_not(None)))).limit(1)).scalar()
    if listed is not None:
        raise RuntimeError(f"cannot downgrade below 0004: snapshot {listed[:12]} (made since 0004) lists "
                           "comparisons by keys that would go away; upgrade again, or delete the snapshots "
                           "made since 0004 first")
    _move_references(conn, _c.key, _c.legacy_key)
    conn.execute(sa.update(_comparisons).where(_c.legacy_key.is_not(None)).values(key=_c.legacy_key))
    op.drop_index(op.f("uq_comparisons_legacy_key"), table_name="comparisons")
    op.drop_column("comparisons", "duplicate_of")  # SQLite >= 3.35: ALTER TABLE DROP COLUMN, no table copy
    op.drop_column("comparisons", "legacy_key")
