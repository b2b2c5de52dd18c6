"""A big file is read in a worker process: the store ends up exactly as with an import in one process,
errors still name FILE:LINE and store nothing, and the worker never outlives the import."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from node import import_worker
from node.errors import ImportFormatError, NodeError
from node.exporting import write_records
from node.importing import JsonRecordError, Reject, iter_records
from storage.errors import InvalidRecordError
from storage.records import Comparison, Record
from storage.rows import RowBuilder
from storage.store import Store
from tests.storage.conftest import db_url, postgres_server, sample_records, store  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not import_worker.can_fork(), reason="the worker needs fork() and two cores")


def _records(n: int) -> list[Record]:
    many: list[Record] = [Comparison("votes", f"question {i // 3}", f"good {i}", f"poor {i}", "A",
                                     annotator=f"labeler-{i % 7}", external_id=str(i)) for i in range(n)]
    return sample_records("mixed") + many + sample_records("other")


def _file(tmp_path: Path, n: int = 60) -> Path:
    path = tmp_path / "in.jsonl"
    write_records(path, _records(n))
    return path


def _snapshot(s: Store, since: datetime) -> tuple[list[Record], dict[str, int], Any]:
    """The store's records (created_at dropped where it is the import time), counts and stats."""
    records = [replace(r, created_at=None) if r.created_at and r.created_at >= since else r
               for r in s.iter_records()]
    return records, s.table_counts(), s.stats()


def _no_worker_left() -> bool:
    return not [p for p in multiprocessing.active_children() if p.name == "rewardnode-import-reader"]


def test_the_worker_stores_exactly_what_one_process_stores(store: Store, tmp_path: Path) -> None:  # noqa: F811
    path = _file(tmp_path)
    since = datetime.now(UTC)
    seen: list[int] = []
    result = store.import_records(iter_records(path, parallel=True), batch_size=7, progress=seen.append)
    assert _no_worker_left()
    assert sum(seen) == result.total_added + result.total_duplicates and max(seen) <= 7
    other = Store.open(f"sqlite:///{tmp_path / 'one.db'}")
    try:
        assert other.import_records(iter_records(path, parallel=False), batch_size=7) == result
        assert _snapshot(store, since) == _snapshot(other, since)
    finally:
        other.close()
    again = store.import_records(iter_records(path, parallel=True), batch_size=7)
    assert again.total_added == 0 and again.total_duplicates == result.total_added + result.total_duplicates


def test_a_bad_line_names_file_and_line_and_stores_nothing(store: Store, tmp_path: Path) -> None:  # noqa: F811
    path = _file(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(40, '{"prompt": "p", "chosen": "same", "rejected": "same"}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ImportFormatError, match=r"in\.jsonl:41: 'chosen' and 'rejected' are identical") as err:
        store.import_records(iter_records(path, parallel=True), batch_size=5)
    assert err.value.line == 41
    assert sum(store.table_counts().values()) == 0
    assert _no_worker_left()


def test_a_bad_record_of_a_json_file_is_named_by_number_from_the_worker(store: Store,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    items: list[Any] = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(30)]
    items[20] = {"prompt": "p", "chosen": "a"}
    path.write_text(json.dumps(items, indent=2), encoding="utf-8")
    with pytest.raises(JsonRecordError) as err:
        store.import_records(iter_records(path, parallel=True), batch_size=5)
    assert str(err.value).startswith(f"{path}: record 21: missing required field 'rejected'")
    assert err.value.line == 21 and sum(store.table_counts().values()) == 0 and _no_worker_left()


def test_skipped_lines_reach_the_rejects_callback_here_in_order(store: Store, tmp_path: Path) -> None:  # noqa: F811
    path = _file(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "{not json")
    lines.insert(20, "{not json")
    lines.append("{not json")  # after the last batch
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    here: list[Reject] = []
    there: list[Reject] = []
    in_worker = iter_records(path, parallel=True, skip_invalid=True, rejects=there.append)
    result = store.import_records(in_worker, batch_size=4)
    list(iter_records(path, parallel=False, skip_invalid=True, rejects=here.append))
    assert there == here and [r.number for r in there] == [4, 21, len(lines)]
    assert result.added["comparisons"] + result.duplicates["comparisons"] == 60 + 8  # no line lost


def test_an_error_in_the_store_ends_the_worker(store: Store, tmp_path: Path) -> None:  # noqa: F811
    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.import_records(iter_records(_file(tmp_path, 500), parallel=True), batch_size=5, progress=stop)
    assert _no_worker_left()
    assert sum(store.table_counts().values()) == 0


def test_errors_of_the_builder_come_back_as_they_were(store: Store, tmp_path: Path,  # noqa: F811
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: RowBuilder, batch: list[Record]) -> None:
        raise InvalidRecordError("record 3 is odd", "make it even")

    monkeypatch.setattr(RowBuilder, "build", refuse)  # the forked worker inherits the patch
    with pytest.raises(InvalidRecordError, match="record 3 is odd; make it even") as err:
        store.import_records(iter_records(_file(tmp_path), parallel=True))
    assert (err.value.cause, err.value.fix) == ("record 3 is odd", "make it even")

    class Unpicklable(Exception):
        def __init__(self, a: str, b: str) -> None:
            super().__init__(f"{a} {b}")

    def fail(self: RowBuilder, batch: list[Record]) -> None:
        raise Unpicklable("local", "class")

    monkeypatch.setattr(RowBuilder, "build", fail)
    with pytest.raises(RuntimeError, match="(?s)reader process failed.*Unpicklable: local class"):
        store.import_records(iter_records(_file(tmp_path), parallel=True))
    assert sum(store.table_counts().values()) == 0 and _no_worker_left()


def test_a_worker_that_dies_fails_the_import(store: Store, tmp_path: Path,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def die(self: RowBuilder, batch: list[Record]) -> None:
        os._exit(3)

    monkeypatch.setattr(RowBuilder, "build", die)
    with pytest.raises(NodeError, match=r"reader process ended unexpectedly \(exit code 3\); nothing was stored"):
        store.import_records(iter_records(_file(tmp_path), parallel=True))
    assert sum(store.table_counts().values()) == 0 and _no_worker_left()


def test_small_files_are_read_here_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, 5)
    started: list[bool] = []
    real = import_worker.worker_batches

    def spy(*args: Any) -> Iterator[Any]:
        started.append(True)
        return real(*args)

    monkeypatch.setattr(import_worker, "worker_batches", spy)
    small = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    try:
        small.import_records(iter_records(path))
        assert started == []
        monkeypatch.setattr(import_worker, "WORKER_MIN_BYTES", 1)
        small.import_records(iter_records(path))
        assert started == [True]
        records = iter_records(path, parallel=True)
        first = next(records)  # iterated here already: the rest is read here too
        small.import_records(records)
        assert started == [True] and first.source == "mixed"
    finally:
        small.close()


def test_a_missing_file_is_reported_from_the_worker(store: Store, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ImportFormatError, match="nope.jsonl: cannot open the file"):
        store.import_records(iter_records(tmp_path / "nope.jsonl", parallel=True))
    lines = [json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})] * 3
    (tmp_path / "ok.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert store.import_records(iter_records(tmp_path / "ok.jsonl", parallel=True)).duplicates["comparisons"] == 2


def test_when_fork_fails_the_file_is_read_here(store: Store, tmp_path: Path,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(multiprocessing.get_context("fork").Process, "start", refuse)
    rejected: list[int] = []
    path = _file(tmp_path)
    path.write_text(path.read_text(encoding="utf-8") + "{bad\n", encoding="utf-8")
    result = store.import_records(iter_records(path, parallel=True, skip_invalid=True,
                                               rejects=lambda r: rejected.append(r.number)))
    assert result.added["comparisons"] == 67 and rejected == [len(path.read_text().splitlines())]
