"""Snapshots: content-hashed, reproducible after new imports, tamper-evident."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from storage import models as m
from storage.errors import NotFoundError, SnapshotIntegrityError
from storage.records import Comparison
from storage.store import Store
from tests.storage.conftest import sample_records


def _expected_id(store: Store, sources: list[str] | None = None) -> str:
    """sha256 over "kind\\tkey\\n" lines, kinds in KINDS order, keys sorted (recomputed in Python)."""
    digest = hashlib.sha256()
    with store.engine.connect() as conn:
        src = m.Source.__table__
        for kind in m.KINDS:
            t = m.Base.metadata.tables[kind]
            stmt = sa.select(t.c.key).join(src, src.c.id == t.c.source_id)
            if sources is not None:
                stmt = stmt.where(src.c.name.in_(sources))
            for key in sorted(conn.execute(stmt).scalars()):
                digest.update(f"{kind}\t{key}\n".encode())
    return digest.hexdigest()


def test_snapshot_id_is_the_content_hash_and_stable(store: Store) -> None:
    store.import_records(sample_records())
    snap = store.create_snapshot()
    assert snap.id == _expected_id(store)
    assert snap.counts == {"comparisons": 4, "rankings": 1, "ratings": 1, "feedback": 1, "demonstrations": 1}
    assert snap.total == 8 and snap.filter == {"sources": None}
    assert snap.created_at.utcoffset() is not None
    again = store.create_snapshot()
    assert again == snap  # identical content returns the stored snapshot, created_at included
    assert store.list_snapshots() == [snap]
    assert store.get_snapshot(snap.id[:10]) == snap
    store.verify_snapshot(snap.id)


def test_same_records_give_the_same_id_in_any_store(store: Store, tmp_path: object) -> None:
    store.import_records(sample_records())
    other = Store.open(f"sqlite:///{tmp_path}/other.db")
    try:
        other.import_records(list(reversed(sample_records())), batch_size=3)
        assert other.create_snapshot().id == store.create_snapshot().id
    finally:
        other.close()


def test_new_data_gives_a_new_snapshot_and_the_old_one_is_unchanged(store: Store) -> None:
    store.import_records(sample_records())
    old = store.create_snapshot()
    old_comparisons = list(store.snapshot_comparisons(old.id))
    store.import_records([Comparison("src", "new prompt", "x", "y", "B", annotator="ann9")])
    new = store.create_snapshot()
    assert new.id != old.id and new.counts["comparisons"] == old.counts["comparisons"] + 1
    assert list(store.snapshot_comparisons(old.id)) == old_comparisons
    assert len(list(store.snapshot_comparisons(new.id))) == 5
    assert list(store.snapshot_records(old.id)) == [r for r in store.iter_records()
                                                   if not (isinstance(r, Comparison) and r.prompt == "new prompt")]
    assert len(store.comparison_rows(snapshot_id=old.id)) == 4
    assert len(store.ranking_rows(snapshot_id=old.id)) == 1
    store.verify_snapshot(old.id)
    store.verify_snapshot(new.id)


def test_snapshot_of_some_sources(store: Store) -> None:
    store.import_records(sample_records("a") + sample_records("b"))
    snap_a = store.create_snapshot(sources=["a"])
    assert snap_a.filter == {"sources": ["a"]}
    assert snap_a.id == _expected_id(store, ["a"])
    assert {r.source for r in store.snapshot_records(snap_a.id)} == {"a"}
    assert store.create_snapshot(sources=["a", "b"]).id == store.create_snapshot().id
    with pytest.raises(NotFoundError, match="no source named 'c'"):
        store.create_snapshot(sources=["c"])


def test_verify_detects_tampered_items(store: Store) -> None:
    store.import_records(sample_records())
    snap = store.create_snapshot()
    items = m.SnapshotItem.__table__
    with store.engine.begin() as conn:  # drop one item: the rest no longer hash to the id
        key = conn.execute(sa.select(items.c.item_key).where(items.c.kind == "ratings")).scalar_one()
        conn.execute(sa.delete(items).where(items.c.item_key == key))
    with pytest.raises(SnapshotIntegrityError, match="corrupt") as err:
        store.verify_snapshot(snap.id)
    assert "create a new snapshot" in str(err.value)
    with store.engine.begin() as conn:  # put it back under another kind: still wrong
        conn.execute(sa.insert(items).values(snapshot_id=snap.id, kind="feedback", item_key=key))
    with pytest.raises(SnapshotIntegrityError):
        store.verify_snapshot(snap.id)
    with store.engine.begin() as conn:
        conn.execute(sa.update(items).where(items.c.item_key == key).values(kind="ratings"))
    store.verify_snapshot(snap.id)


def test_verify_detects_deleted_records(store: Store) -> None:
    store.import_records(sample_records())
    snap = store.create_snapshot()
    fb = m.Feedback.__table__
    with store.engine.begin() as conn:
        conn.execute(sa.delete(fb))
    with pytest.raises(SnapshotIntegrityError, match="1 feedback that are no longer stored"):
        store.verify_snapshot(snap.id)


def test_unknown_snapshot_ids(store: Store) -> None:
    with pytest.raises(NotFoundError, match="snapshot"):
        store.get_snapshot("abc123")
    with pytest.raises(NotFoundError):
        store.verify_snapshot("not-hex")
    with pytest.raises(NotFoundError):
        store.snapshot_records("f" * 64)
