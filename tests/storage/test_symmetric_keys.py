"""Comparison keys are symmetric: a vote written with its sides swapped is the same record (migration 0004).

Every test runs on SQLite and on PostgreSQL (the `store` and `db_url` fixtures of conftest.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from storage import hashing
from storage import models as m
from storage.db import begin_write, make_engine, normalize_url
from storage.importer import _Importer
from storage.records import MIRRORED, OUTCOMES, Comparison, Record
from storage.rows import COLUMNS, RowBuilder
from storage.store import Store
from tests.storage.conftest import T0, migrate, sample_records

comparisons = m.table_of(m.Comparison)
api_keys = m.table_of(m.ApiIdempotencyKey)
labels = m.table_of(m.CampaignLabel)
snapshots, snapshot_items = m.table_of(m.Snapshot), m.table_of(m.SnapshotItem)


def swapped(c: Comparison) -> Comparison:
    """The same vote written the other way round."""
    agreement = None if c.agreement is None else 1 - c.agreement
    outcome: Any = MIRRORED[c.outcome]
    return replace(c, response_a=c.response_b, response_b=c.response_a, outcome=outcome, model_a=c.model_b,
                   model_b=c.model_a, agreement=agreement)


def ids(c: Comparison) -> tuple[str, str, str]:
    pid = hashing.prompt_id(c.prompt)
    return pid, hashing.response_id(pid, c.response_a), hashing.response_id(pid, c.response_b)


def lo_hi(prompt: str, x: str, y: str) -> tuple[str, str]:
    """The two response texts ordered by their ids (the order a symmetric key writes them in)."""
    pid = hashing.prompt_id(prompt)
    return (x, y) if hashing.response_id(pid, x) < hashing.response_id(pid, y) else (y, x)


def test_the_key_of_a_comparison_is_the_key_of_its_swapped_sides() -> None:
    outcome: Any
    for outcome in OUTCOMES:
        c = Comparison("s", "p", "x", "y", outcome, annotator="ann", external_id="7", campaign="c")
        assert hashing.comparison_key(c, *ids(c)) == hashing.comparison_key(swapped(c), *ids(swapped(c)))
    c = Comparison("s", "p", "x", "y", "A", annotator="ann", external_id="7", campaign="c")
    others = [replace(c, outcome="B"), replace(c, outcome="tie"), replace(c, outcome="both_bad"),
              replace(c, annotator="other"), replace(c, source="t"), replace(c, external_id="8"),
              replace(c, campaign=None)]
    keys = {hashing.comparison_key(r, *ids(r)) for r in [c, *others]}
    assert len(keys) == len(others) + 1
    not_mirrored = replace(swapped(c), outcome="A")  # sides swapped, outcome not: the other vote
    key_of = hashing.comparison_key
    assert key_of(not_mirrored, *ids(not_mirrored)) == key_of(others[0], *ids(c)) != key_of(c, *ids(c))
    outcome = "C"
    with pytest.raises(ValueError, match="outcome 'C'"):
        hashing.comparison_key(replace(c, outcome=outcome), *ids(c))


def test_the_hot_path_writes_the_documented_key_in_both_orders() -> None:
    lo, hi = lo_hi("p", "x", "y")
    outcomes: list[Any] = list(OUTCOMES)
    records = [Comparison("s", "p", a, b, o, annotator="ann")
               for a, b in ((lo, hi), (hi, lo)) for o in outcomes]
    batch = RowBuilder("sqlite", T0).build(list(records))
    keys = batch.columns["comparisons"][COLUMNS["comparisons"].index("key")]
    assert list(keys) == [hashing.comparison_key(r, *ids(r)) for r in records]
    assert keys[:4] == tuple(keys[4 + i] for i in (1, 0, 2, 3))  # hi first: A <-> B, tie, both_bad


def test_a_reimport_with_the_sides_swapped_adds_nothing(store: Store) -> None:
    records = [r for r in sample_records() if isinstance(r, Comparison)]
    assert store.import_records(records).added["comparisons"] == 4
    counts, votes = store.table_counts(), len(store.comparison_rows())
    again = store.import_records([swapped(r) for r in records])
    assert (again.added["comparisons"], again.duplicates["comparisons"]) == (0, 4)
    assert store.table_counts() == counts and len(store.comparison_rows()) == votes == 4
    both = [Comparison("new", "q", "x", "y", "A", created_at=T0), Comparison("new", "q", "y", "x", "B")]
    assert store.import_records(both).duplicates["comparisons"] == 1
    assert list(store.iter_records(sources=["new"])) == both[:1]


def test_a_swap_that_changes_the_vote_is_a_new_record(store: Store) -> None:
    c = Comparison("s", "p", "x", "y", "A", annotator="ann", external_id="1", campaign="c")
    store.import_records([c, Comparison("s", "p", "x", "y", "tie")])
    changed = [replace(swapped(c), outcome="A"), replace(swapped(c), outcome="tie"),
               replace(swapped(c), annotator="other"), replace(swapped(c), source="t"),
               replace(swapped(c), external_id="2"), replace(swapped(c), campaign=None),
               Comparison("s", "p", "y", "x", "B")]  # the tie swapped is the tie; this one is not
    result = store.import_records(changed)
    assert (result.added["comparisons"], result.duplicates["comparisons"]) == (len(changed), 0)
    assert store.import_records([Comparison("s", "p", "y", "x", "tie")]).duplicates["comparisons"] == 1


def test_a_label_repeating_an_imported_vote_with_the_sides_swapped_stores_no_comparison(store: Store) -> None:
    store.import_records([Comparison("pool", "p", "r-a", "r-b", "A", annotator="seed")])
    store.create_campaign("c", sources=["pool"])
    pair = store.next_pair("c", "alice")
    assert pair is not None
    # alice's vote for hi was already imported, written lo against hi
    store.import_records([Comparison("labeling:c", "p", pair.response_lo, pair.response_hi, "B",
                                     annotator="alice", campaign="c")])
    before = store.table_counts()["comparisons"]
    result = store.record_label("c", pair_id=pair.pair_id, annotator="alice",
                                left_response_id=pair.response_hi_id, choice="A")
    assert result.stored and store.table_counts()["comparisons"] == before
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(comparisons.c.key).where(comparisons.c.campaign_id.is_not(None)))
        assert list(stored.scalars()) == [result.comparison_key]


# ---- migration 0004 on a store written with the old keys ------------------------------------


def old_key(row: tuple[object, ...]) -> str:
    """The key of a comparison row tuple (COLUMNS order, names) by the rule before 0004: as stored."""
    col: dict[str, Any] = dict(zip(COLUMNS["comparisons"], row, strict=True))
    return hashing.record_key("comparison", (col["prompt_id"], col["response_a_id"], col["response_b_id"]),
                              [col["source_id"], col["outcome"], col["annotator_id"], col["external_id"],
                               col["campaign_id"]])


def store_before_0004(url: str, records: list[Record]) -> list[str]:
    """A store at schema 0003 holding `records` as the importer before 0004 wrote them; their keys."""
    migrate(url, "0003")
    engine = make_engine(normalize_url(url))
    try:
        with engine.connect() as conn, begin_write(conn):
            batch = RowBuilder(conn.dialect.name, T0).build(records)
            rows = [(old_key(row), *row[1:]) for row in zip(*batch.columns["comparisons"], strict=True)]
            batch.columns["comparisons"] = list(zip(*rows, strict=True))
            importer = _Importer(conn, T0)
            importer.insert(batch)
            assert importer.added["comparisons"] == len(rows)
            return [str(row[0]) for row in rows]
    finally:
        engine.dispose()


def add_old_references(url: str, keys: list[str], labeled: list[Comparison]) -> str:
    """What named comparisons before 0004: a snapshot of them all (its id), and a campaign label and an
    API key (labeler:ann/kI) for the comparison of each of `labeled` (theirs are the first keys)."""
    campaigns, pairs, annotators = m.table_of(m.Campaign), m.table_of(m.CampaignPair), m.table_of(m.Annotator)
    lines = "".join(hashing.snapshot_line("comparisons", k) for k in sorted(keys))
    snapshot_id = hashlib.sha256(lines.encode()).hexdigest()
    counts = {**dict.fromkeys(m.KINDS, 0), "comparisons": len(keys)}
    engine = make_engine(normalize_url(url))
    try:
        with engine.connect() as conn, begin_write(conn):
            conn.execute(sa.insert(snapshots).values(id=snapshot_id, created_at=T0, filter={"sources": None},
                                                     counts=counts))
            conn.execute(sa.insert(snapshot_items), [
                {"snapshot_id": snapshot_id, "kind": "comparisons", "item_key": k} for k in keys])
            campaign = conn.execute(sa.insert(campaigns).values(name="web", created_at=T0)
                                    .returning(campaigns.c.id)).scalar_one()
            annotator = conn.execute(sa.select(annotators.c.id).where(annotators.c.name == "ann")
                                     ).scalar_one()
            for i, (c, key) in enumerate(zip(labeled, keys, strict=False)):
                pid, a, b = ids(c)
                pair = conn.execute(sa.insert(pairs).values(
                    campaign_id=campaign, prompt_id=pid, response_lo_id=min(a, b), response_hi_id=max(a, b),
                    created_at=T0).returning(pairs.c.id)).scalar_one()
                conn.execute(sa.insert(labels).values(
                    pair_id=pair, annotator_id=annotator, left_response_id=a, choice=c.outcome,
                    comparison_key=key, created_at=T0))
                conn.execute(sa.insert(api_keys).values(key=f"labeler:ann/k{i}", kind="comparisons",
                                                        content_key=key, fingerprint=None, created_at=T0))
    finally:
        engine.dispose()
    return snapshot_id


def test_migration_0004_counts_a_vote_stored_twice_once_and_keeps_every_reference(db_url: str) -> None:
    lo, hi = lo_hi("p", "x", "y")
    first = Comparison("hh", "p", hi, lo, "A", annotator="ann", confidence=0.9, comment="as given",
                       created_at=T0)
    again = replace(swapped(first), comment="the swapped export", created_at=T0 + timedelta(days=1))
    lo2, hi2 = lo_hi("p", "x", "z")
    single = Comparison("hh", "p", hi2, lo2, "tie", annotator="ann", external_id="9", created_at=T0)
    other = Comparison("hh", "p", lo, hi, "B", annotator="ann2", created_at=T0)  # lo first: its key stays
    records: list[Record] = [first, single, again, other]
    keys = store_before_0004(db_url, records)
    assert keys[0] != keys[2]  # the doubled vote: two rows, two keys
    snapshot_id = add_old_references(db_url, keys, [first, single])

    with Store.open(db_url) as store:  # migrates to 0004
        vote = hashing.comparison_key(first, *ids(first))
        assert vote == keys[2] and vote == hashing.comparison_key(again, *ids(again))
        with store.engine.connect() as conn:
            c = comparisons.c
            rows = conn.execute(sa.select(c.key, c.legacy_key, c.duplicate_of).order_by(c.id)).all()
            assert [tuple(r) for r in rows] == [
                (keys[0], None, vote),  # repeats the vote: kept, with its key, counted nowhere
                (hashing.comparison_key(single, *ids(single)), keys[1], None),  # rekeyed, old key kept
                (keys[2], None, None),  # the vote's row (written lo first: its key did not change)
                (keys[3], None, None)]
            assert dict(conn.execute(sa.select(api_keys.c.key, api_keys.c.content_key)).all()) == {
                "labeler:ann/k0": vote, "labeler:ann/k1": rows[1].key}
        # counted once: stats, exports, aggregation input, new snapshots
        live = [single, again, other]
        assert list(store.iter_records()) == live
        assert store.stats()["hh"].comparisons == 3 and store.totals().comparisons == 3
        assert len(store.comparison_rows()) == 3 and store.table_counts()["comparisons"] == 4
        assert store.create_snapshot().counts["comparisons"] == 3
        # the old snapshot: the same id, verified, and exactly the rows it read before
        assert store.get_snapshot(snapshot_id).id == snapshot_id
        store.verify_snapshot(snapshot_id)
        assert list(store.snapshot_records(snapshot_id)) == records
        assert len(store.comparison_rows(snapshot_id=snapshot_id)) == 4
        # labels and API keys name the row that counts; an API retry is still a retry
        assert [r.comparison_key for r in store.campaign_labels("web")] == [vote, rows[1].key]
        assert store.submit(replace(single, idempotency_key="k1"), scope="labeler:ann") is False
        assert store.submit(replace(again, idempotency_key="k0"), scope="labeler:ann") is False
        # every order of every stored vote is a duplicate now
        result = store.import_records([*records, *(swapped(r) for r in records if isinstance(r, Comparison))])
        assert (result.added["comparisons"], result.duplicates["comparisons"]) == (0, 8)


def test_migration_0004_goes_down_to_the_old_keys_and_up_again(db_url: str) -> None:
    lo, hi = lo_hi("p", "x", "y")
    first = Comparison("hh", "p", hi, lo, "A", annotator="ann", created_at=T0)
    records: list[Record] = [first, Comparison("hh", "p", hi, lo, "both_bad", created_at=T0), swapped(first)]
    keys = store_before_0004(db_url, records)
    snapshot_id = add_old_references(db_url, keys, [first])
    migrate(db_url, "head")
    with Store.open(db_url) as store:
        newest = Comparison("new", "p", hi, lo, "B", created_at=T0)  # stored since 0004, hi first
        store.import_records([newest])
        new = store.create_snapshot(sources=["new"])
    with pytest.raises(RuntimeError, match=f"snapshot {new.id[:12]} .* by keys that would go away"):
        migrate(db_url, "0003", down=True)
    engine = make_engine(normalize_url(db_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(snapshot_items).where(snapshot_items.c.snapshot_id == new.id))
            conn.execute(sa.delete(snapshots).where(snapshots.c.id == new.id))
    finally:
        engine.dispose()
    migrate(db_url, "0003", down=True)
    engine = make_engine(normalize_url(db_url))
    try:
        with engine.connect() as conn:
            old = [c["name"] for c in sa.inspect(conn).get_columns("comparisons")]
            assert "legacy_key" not in old and "duplicate_of" not in old
            stored = list(conn.execute(sa.text("SELECT key FROM comparisons ORDER BY id")).scalars())
            old_rule = hashing.record_key("comparison", ids(newest), ["new", "B", None, None, None])
            assert stored == [*keys, old_rule]
            # the label and the API key named the repeated row: they name the vote's other row now
            assert conn.execute(sa.select(labels.c.comparison_key)).scalar_one() == keys[2]
            assert conn.execute(sa.select(api_keys.c.content_key)).scalar_one() == keys[2]
    finally:
        engine.dispose()
    with Store.open(db_url) as store:
        store.verify_snapshot(snapshot_id)
        assert list(store.snapshot_records(snapshot_id)) == records
        assert len(store.comparison_rows()) == 3
