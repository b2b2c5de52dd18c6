"""import_records: one transaction, content-hash dedup, idempotency keys, validation, stats."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from storage import hashing, importer
from storage import models as m
from storage.errors import InvalidRecordError
from storage.records import Comparison, Demonstration, Feedback, Ranking, Rating, Record
from storage.rows import CHECKED_CONSTRAINTS, COLUMNS, RowBatch, RowBuilder, build_batches
from storage.store import Store
from storage.types import SourceStats
from tests.storage.conftest import sample_records


def test_import_then_reimport_adds_nothing(store: Store) -> None:
    records = sample_records()
    first = store.import_records(records)
    assert first.added == {"comparisons": 4, "rankings": 1, "ratings": 1, "feedback": 1, "demonstrations": 1}
    assert first.total_duplicates == 0
    assert (first.prompts_added, first.responses_added) == (4, 9)
    counts = store.table_counts()
    second = store.import_records(records)
    assert second.total_added == 0 and second.prompts_added == 0 and second.responses_added == 0
    assert second.duplicates == first.added
    assert store.table_counts() == counts


def test_duplicates_inside_one_import_and_across_batches(store: Store) -> None:
    base = sample_records()
    records = base + base[:3] + base  # repeats inside the same call, split over batches of 2
    seen: list[int] = []
    result = store.import_records(records, batch_size=2, progress=seen.append)
    assert result.total_added == len(base)
    assert result.total_duplicates == len(records) - len(base)
    assert sum(seen) == len(records) and max(seen) == 2
    assert store.table_counts()["ranking_items"] == 3


def test_fields_outside_the_key_do_not_make_a_record_new(store: Store) -> None:
    c = sample_records()[0]
    assert isinstance(c, Comparison)
    store.import_records([c])
    again = store.import_records([replace(c, comment="changed", confidence=0.1, subset="other",
                                          created_at=datetime.now(UTC))])
    assert again.duplicates["comparisons"] == 1
    changed = store.import_records([replace(c, outcome="B")])  # the outcome is part of the key
    assert changed.added["comparisons"] == 1


def test_idempotency_key_seen_before_is_a_duplicate(store: Store) -> None:
    a = Comparison("app", "p", "x", "y", "A", annotator="u1", idempotency_key="submit-42")
    retried = replace(a, outcome="B", comment="double click")  # other content, same idempotency key
    assert store.import_records([a]).added["comparisons"] == 1
    result = store.import_records([retried, replace(a, idempotency_key=None, external_id="n")])
    assert result.duplicates["comparisons"] == 1 and result.added["comparisons"] == 1
    stored = [r for r in store.iter_records() if isinstance(r, Comparison) and r.idempotency_key == "submit-42"]
    assert [r.outcome for r in stored] == ["A"]
    rating = Rating("app", "p", "x", 3.0, 1.0, 5.0, idempotency_key="submit-42")  # keys are per kind
    assert store.import_records([rating]).added["ratings"] == 1


def _failing(records: list[Record], after: int) -> Iterator[Record]:
    for i, r in enumerate(records):
        if i == after:
            raise ValueError("bad line 7: not JSON")
        yield r


@pytest.mark.parametrize("preload", [False, True])
def test_generator_raising_midway_leaves_the_store_unchanged(store: Store, preload: bool) -> None:
    if preload:
        store.import_records(sample_records("old"))
    before = store.table_counts()
    stats_before = store.stats()
    many = [Comparison("new", f"p{i % 7}", f"a{i}", f"b{i}", "A", annotator=f"u{i % 5}") for i in range(50)]
    with pytest.raises(ValueError, match="bad line 7"):
        store.import_records(_failing(sample_records("new") + many, after=40), batch_size=8)
    assert store.table_counts() == before
    assert store.stats() == stats_before


def test_invalid_record_stores_nothing_and_names_the_record(store: Store) -> None:
    good = sample_records()
    bad = Comparison("src", "p", "a", "b", "C", external_id="line-9")  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match=r"record 9 .*line-9.*outcome 'C'") as err:
        store.import_records([*good, bad])
    assert "nothing was stored" in str(err.value)
    assert sum(store.table_counts().values()) == 0


@pytest.mark.parametrize("record, problem", [
    (Comparison("s", "p", "same", "same", "A"), "same text"),
    (Comparison("s", "p", "a", "b", "A", confidence=1.5), "confidence"),
    (Comparison("s", "p", "a", "b", "A", agreement=float("nan")), "agreement"),
    (Ranking("s", "p", ("a",)), ">= 2 distinct"),
    (Ranking("s", "p", ("a", "b", "a")), ">= 2 distinct"),
    (Ranking("s", "p", ("a", "b"), models=("m",)), "one model per response"),
    (Rating("s", "p", "a", 9.0, 1.0, 7.0), "scale"),
    (Rating("s", "p", "a", float("inf"), 1.0, 7.0), "finite"),
    (Rating("s", "p", "a", 2.0, 3.0, 3.0), "scale"),
    (Comparison("", "p", "a", "b", "A"), "source name is empty"),
    (Demonstration("s", "p\ud800", "x"), "not valid Unicode"),
])
def test_records_the_schema_would_refuse_are_refused_first(store: Store, record: Record, problem: str) -> None:
    with pytest.raises(InvalidRecordError, match=problem):
        store.import_records([record])
    assert sum(store.table_counts().values()) == 0


def test_nul_characters(store: Store) -> None:
    r = Comparison("s", "nul\x00prompt", "a\x00", "b", "A")
    if store.dialect == "postgresql":
        with pytest.raises(InvalidRecordError, match="NUL character"):
            store.import_records([r])
    else:
        store.import_records([r])
        assert list(store.iter_records()) == [replace(r, created_at=next(store.iter_records()).created_at)]


def test_stats_per_source(store: Store) -> None:
    store.import_records(sample_records("a") + [
        Comparison("b", "What is 2+2?", "4", "22", "B", annotator="ann1"),
        Comparison("b", "What is 2+2?", "4", "22", "B", annotator="ann2"),
    ])
    stats = store.stats()
    assert stats["a"] == SourceStats(prompts=4, responses=9, comparisons=4, rankings=1, ratings=1, feedback=1,
                                     demonstrations=1, annotators=5)
    assert stats["b"] == SourceStats(prompts=1, responses=2, comparisons=2, annotators=2)


def test_hot_path_keys_equal_the_documented_key(store: Store) -> None:
    records = sample_records()
    store.import_records(records)
    c = records[0]
    assert isinstance(c, Comparison)
    pid = hashing.prompt_id(c.prompt)
    expected = hashing.comparison_key(c, pid, hashing.response_id(pid, c.response_a),
                                      hashing.response_id(pid, c.response_b))
    t = m.Comparison.__table__
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(t.c.key).where(t.c.external_id == "1")).scalar_one() == expected
        assert conn.execute(sa.select(m.Prompt.__table__.c.id).where(m.Prompt.__table__.c.text == c.prompt)
                            ).scalar_one() == pid


def test_foreign_keys_hold_after_import_and_checks_are_back_on(store: Store) -> None:
    store.import_records(sample_records(), batch_size=3)
    if store.dialect != "sqlite":
        return
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA ignore_check_constraints").scalar_one() == 0


def test_the_importer_enforces_every_check_constraint_of_the_tables_it_fills(store: Store) -> None:
    # SQLite imports skip CHECK constraints (rows.py enforces them): a new CHECK must be enforced there too
    inspector = sa.inspect(store.engine)
    checks = {ck["name"] for table in COLUMNS for ck in inspector.get_check_constraints(table)}
    assert checks == CHECKED_CONSTRAINTS


def _indexes(store: Store) -> list[tuple[str, str, str]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT tbl_name, name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name")]


def _many(tag: str, n: int) -> list[Record]:
    return [Comparison(tag, f"{tag} p{i % 7}", f"a{i}", f"b{i}", "A", annotator=f"u{i % 5}") for i in range(n)]


def _spy_dropped_indexes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the indexes each import dropped (and rebuilt), filled in as imports finish."""
    dropped: list[str] = []
    finish = importer._Importer.finish

    def spy(self: importer._Importer) -> None:
        dropped.extend(name for name, _ in self.dropped)
        finish(self)

    monkeypatch.setattr(importer._Importer, "finish", spy)
    return dropped


def test_a_big_import_rebuilds_the_secondary_indexes_it_dropped(store: Store,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if store.dialect != "sqlite":
        pytest.skip("SQLite only: on PostgreSQL DROP INDEX would lock readers out, so indexes stay")
    dropped = _spy_dropped_indexes(monkeypatch)
    monkeypatch.setattr(importer, "DEFER_INDEXES_MIN_ROWS", 10)
    before = _indexes(store)
    store.import_records(sample_records("a") + _many("a", 40), batch_size=8)
    assert set(dropped) == {"ix_responses_prompt_id", "ix_comparisons_annotator_id", "ix_comparisons_prompt_id",
                            "ix_comparisons_source_id"}  # not the unique ones: they deduplicate
    assert _indexes(store) == before
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    assert store.comparison_rows(sources=["a"]).source == ("a",) * 44

    dropped.clear()  # fewer rows than the tables hold: the indexes are updated in place
    assert store.import_records(_many("b", 30), batch_size=8).added["comparisons"] == 30
    assert dropped == []
    counts, stats = store.table_counts(), store.stats()
    monkeypatch.setattr(importer, "DEFER_INDEXES_MIN_ROWS", 1)
    with pytest.raises(ValueError, match="bad line 7"):  # a failed import leaves indexes and rows as they were
        store.import_records(_failing(_many("c", 200), after=150), batch_size=8)
    assert _indexes(store) == before
    assert store.table_counts() == counts and store.stats() == stats
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"

def test_created_at_defaults_to_import_time_in_utc(store: Store) -> None:
    before = datetime.now(UTC)
    store.import_records([Feedback("s", "p", "r", False)])
    (record,) = list(store.iter_records())
    assert record.created_at is not None and record.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= record.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert record.created_at.utcoffset() == timedelta(0)


def test_comparison_rows_and_ranking_rows(store: Store) -> None:
    records = sample_records()
    store.import_records(records)
    rows = store.comparison_rows()
    assert len(rows) == 4
    assert rows.outcome == ("A", "tie", "A", "both_bad")
    assert rows.annotator == ("ann1", "ann2", "ann1", None)
    assert rows.source == ("src",) * 4
    pid = hashing.prompt_id("What is 2+2?")
    assert rows.prompt_id[0] == pid and rows.response_a_id[0] == hashing.response_id(pid, "4")
    texts = store.response_texts([rows.response_b_id[0], "0" * 64])
    assert texts == {rows.response_b_id[0]: "5"}
    assert store.prompt_texts([pid]) == {pid: "What is 2+2?"}
    (ranking,) = store.ranking_rows()
    cid = hashing.prompt_id("Pick a color")
    assert ranking.prompt_id == cid and ranking.annotator == "ann3"
    assert ranking.response_ids == tuple(hashing.response_id(cid, t) for t in ("red", "green", "blue"))
    assert store.comparison_rows(sources=["src"]) == rows
    with pytest.raises(LookupError, match="no source named 'nope'"):
        store.comparison_rows(sources=["nope"])


def test_indexes_stay_when_the_records_build_their_own_batches(store: Store,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if store.dialect != "sqlite":
        pytest.skip("SQLite only")
    dropped = _spy_dropped_indexes(monkeypatch)

    class Prebuilt:  # as node/importing.py's files are: batches built in a worker process, this one waits
        def __init__(self, records: list[Record]) -> None:
            self.records = records

        def row_batches(self, builder: RowBuilder, batch_size: int) -> Generator[RowBatch, None, None]:
            return build_batches(self.records, builder, batch_size)

    monkeypatch.setattr(importer, "DEFER_INDEXES_MIN_ROWS", 10)
    assert store.import_records(Prebuilt(_many("a", 80)), batch_size=8).added["comparisons"] == 80  # type: ignore[arg-type]
    assert dropped == []
    assert store.import_records(_many("b", 200), batch_size=8).added["comparisons"] == 200
    assert "ix_comparisons_prompt_id" in dropped


def test_a_model_named_later_fills_a_response_whose_model_was_unknown(store: Store) -> None:
    """Responses are shared by every record holding their text: the first model named for one is kept."""
    store.import_records([Comparison("s", "p", "a", "b", "A")])  # no model known for a or b
    store.import_records([Feedback("s", "p", "a", True, model="llama-3"), Comparison("s", "p", "c", "d", "B"),
                          Rating("s", "p", "c", 3, 1, 5, model="m-c"),  # c is new in this batch, model second
                          Comparison("s", "p", "b", "d", "A", model_a="m-b")])
    store.import_records([Feedback("s", "p", "a", False, model="other")])  # a's model is known: it stays
    with store.engine.connect() as conn:
        models = {text: model for text, model in conn.execute(sa.select(m.Response.text, m.Response.model))}
    assert models == {"a": "llama-3", "b": "m-b", "c": "m-c", "d": None}
