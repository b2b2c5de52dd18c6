"""Immutable, content-hashed dataset snapshots: exactly which records a training run used.

A snapshot lists record keys (snapshot_items), so it reads back the same records after any number
of later imports. Its id is sha256 over the lines "kind<TAB>key<LF>" (storage/hashing.py
snapshot_line), kinds in KINDS order, keys sorted bytewise within a kind; the same content always
gets the same id, and creating it again returns the stored one. There is no update API;
`verify` recomputes the hash from the stored items and checks the records still exist.

Migration 0004 changed the keys of comparisons stored with their sides in the other order (keys
became symmetric); a snapshot made before it still lists their old keys, which the rows keep in
`legacy_key`, and reads them (storage/reading.py label_filter) with the same items and the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, Engine, Row, func, insert, literal, select

from storage import models as m
from storage import reading
from storage.db import begin_write, find_by_prefix
from storage.errors import SnapshotIntegrityError
from storage.hashing import snapshot_line
from storage.types import Snapshot

_items: Final = m.table_of(m.SnapshotItem)
_snapshots: Final = m.table_of(m.Snapshot)
_PAGE: Final = 10_000


def _hash_keys(digest: Any, kind: str, keys: Iterator[Sequence[str]]) -> int:
    """Feed one kind's sorted keys (in pages) into `digest`; the number of keys."""
    n = 0
    for page in keys:
        digest.update("".join(snapshot_line(kind, k) for k in page).encode())
        n += len(page)
    return n


def _pages(conn: Connection, stmt: Any) -> Iterator[Sequence[str]]:
    result = conn.execute(stmt, execution_options={"yield_per": _PAGE})
    yield from result.scalars().partitions(_PAGE)


def _from_row(row: Row[Any]) -> Snapshot:
    return Snapshot(id=row.id, created_at=row.created_at, filter=dict(row.filter),
                    counts={k: int(row.counts.get(k, 0)) for k in m.KINDS})


def create(engine: Engine, sources: Sequence[str] | None) -> Snapshot:
    """Snapshot every record (of `sources`, if given) stored now; an identical snapshot is returned as is."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # hash and copy see the same data
            conn.execution_options(isolation_level="REPEATABLE READ")
        with begin_write(conn):  # SQLite: the write lock keeps imports out until the copy is done
            ids = reading.source_ids(conn, sources)
            digest = hashlib.sha256()
            counts: dict[str, int] = {}
            for kind in m.KINDS:
                t = m.Base.metadata.tables[kind]
                stmt = select(t.c.key).where(*reading.label_filter(t, kind, ids, None)).order_by(t.c.key)
                counts[kind] = _hash_keys(digest, kind, _pages(conn, stmt))
            snapshot_id = digest.hexdigest()
            existing = conn.execute(select(_snapshots).where(_snapshots.c.id == snapshot_id)).first()
            if existing is not None:
                return _from_row(existing)
            names = None if sources is None else sorted(set([sources] if isinstance(sources, str) else sources))
            conn.execute(insert(_snapshots).values(id=snapshot_id, created_at=datetime.now(UTC),
                                                   filter={"sources": names}, counts=counts))
            for kind in m.KINDS:
                t = m.Base.metadata.tables[kind]
                rows = select(literal(snapshot_id), literal(kind), t.c.key).where(
                    *reading.label_filter(t, kind, ids, None))
                conn.execute(insert(_items).from_select(["snapshot_id", "kind", "item_key"], rows))
            row = conn.execute(select(_snapshots).where(_snapshots.c.id == snapshot_id)).one()
            return _from_row(row)


def get(conn: Connection, snapshot_id: str) -> Snapshot:
    """The snapshot with this id (or unique id prefix); NotFoundError / AmbiguousIdError otherwise."""
    full = find_by_prefix(conn, _snapshots.c.id, snapshot_id, "snapshot")
    return _from_row(conn.execute(select(_snapshots).where(_snapshots.c.id == full)).one())


def list_all(conn: Connection) -> list[Snapshot]:
    """Every snapshot, oldest first."""
    return [_from_row(r) for r in conn.execute(select(_snapshots).order_by(_snapshots.c.created_at, _snapshots.c.id))]


def verify(conn: Connection, snapshot_id: str) -> Snapshot:
    """Recompute the snapshot's hash from its items; SnapshotIntegrityError if it or its records changed."""
    snap = get(conn, snapshot_id)
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    for kind in m.KINDS:
        stmt = (select(_items.c.item_key).where(_items.c.snapshot_id == snap.id, _items.c.kind == kind)
                .order_by(_items.c.item_key))
        counts[kind] = _hash_keys(digest, kind, _pages(conn, stmt))
    fix = ("the snapshot tables were edited outside rewardnode; do not train on it: create a new snapshot "
           "(rewardnode keeps snapshots immutable and never edits them)")
    if digest.hexdigest() != snap.id:
        raise SnapshotIntegrityError(
            f"snapshot {snap.id[:12]} is corrupt: its {sum(counts.values())} stored items hash to "
            f"{digest.hexdigest()[:12]}, not to its id", fix)
    if counts != snap.counts:
        raise SnapshotIntegrityError(f"snapshot {snap.id[:12]} is corrupt: it lists {counts} items but recorded "
                                     f"{snap.counts}", fix)
    for kind in m.KINDS:
        t = m.Base.metadata.tables[kind]
        stored: ColumnElement[bool] = select(t.c.id).where(t.c.key == _items.c.item_key).exists()
        if kind == "comparisons":  # or by the key it had before migration 0004 changed it
            stored = stored | select(t.c.id).where(t.c.legacy_key == _items.c.item_key).exists()
        missing = conn.execute(
            select(func.count()).select_from(_items)
            .where(_items.c.snapshot_id == snap.id, _items.c.kind == kind, ~stored)).scalar_one()
        if missing:
            raise SnapshotIntegrityError(
                f"snapshot {snap.id[:12]} lists {missing} {kind} that are no longer stored",
                "the records were deleted outside rewardnode; restore them from a backup, or create a new snapshot")
    return snap


__all__ = ["create", "get", "list_all", "verify"]
