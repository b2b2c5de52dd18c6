"""Aggregation outputs: runs, strengths, pair labels, reliability, and an ambiguity queue that keeps status
(an entry a new run no longer flags is resolved)."""

from __future__ import annotations

import pytest

from storage.errors import InvalidRecordError, NotFoundError
from storage.store import Store
from storage.types import AmbiguousItem, AnnotatorScore, PairLabel
from tests.storage.conftest import sample_records


def _ids(store: Store) -> tuple[str, list[str]]:
    """The '2+2' prompt and its three responses, sorted."""
    rows = store.comparison_rows()
    pid = rows.prompt_id[0]
    responses = sorted({*rows.response_a_id[:2], *rows.response_b_id[:2]})
    return pid, responses


def test_save_and_read_back_a_run(store: Store) -> None:
    store.import_records(sample_records())
    pid, (r1, r2, r3) = _ids(store)
    assert store.latest_aggregation() is None
    run = store.save_aggregation(
        {"alpha": 0.4, "alpha_by_source": {"src": float("nan")}, "n": 4},
        strengths=[(r1, 0.5), (r2, -0.25), (r3, -0.25)],
        pair_labels=[PairLabel(pid, r1, r2, 0.75, 2, 1, 0), PairLabel(pid, r2, r3, None, 1, 0, 1)],
        reliability=[("ann1", 0.9, 2), ("ann2", 0.6, 1)],
        ambiguous=[AmbiguousItem(pid, r1, r2, "low_agreement", 0.5)],
    )
    latest = store.latest_aggregation()
    assert latest is not None and latest.id == run
    assert latest.summary == {"alpha": 0.4, "alpha_by_source": {"src": None}, "n": 4}
    assert (latest.n_strengths, latest.n_pair_labels, latest.n_annotators, latest.n_ambiguous) == (3, 2, 2, 1)
    assert store.aggregation_strengths(run) == {r1: 0.5, r2: -0.25, r3: -0.25}
    assert store.aggregation_strengths(run, method="other") == {}
    assert store.aggregation_pair_labels(run) == [PairLabel(pid, r1, r2, 0.75, 2, 1, 0),
                                                  PairLabel(pid, r2, r3, None, 1, 0, 1)]
    assert store.aggregation_reliability(run) == [AnnotatorScore("ann1", 0.9, 2), AnnotatorScore("ann2", 0.6, 1)]


def test_ambiguity_status_survives_a_new_run(store: Store) -> None:
    store.import_records(sample_records())
    pid, (r1, r2, r3) = _ids(store)
    first = store.save_aggregation({}, [], [], [], [AmbiguousItem(pid, r1, r2, "low_agreement", 0.4),
                                                    AmbiguousItem(pid, r1, r3, "cycle", 0.9)])
    queue = store.ambiguity_queue()
    assert [(q.response_hi_id, q.reason, q.status, q.run_id) for q in queue] == [
        (r3, "cycle", "open", first), (r2, "low_agreement", "open", first)]  # highest score first
    store.resolve_ambiguous(queue[0].id)
    store.resolve_ambiguous(queue[0].id)  # resolving twice is harmless
    second = store.save_aggregation({}, [], [], [], [AmbiguousItem(pid, r1, r3, "cycle", 0.2),
                                                     AmbiguousItem(pid, r2, r3, "both_bad", 1.0)])
    everything = {(q.response_lo_id, q.response_hi_id, q.reason): q for q in store.ambiguity_queue(status=None)}
    assert len(everything) == 3
    cycle = everything[(r1, r3, "cycle")]
    assert (cycle.status, cycle.score, cycle.run_id, cycle.id) == ("resolved", 0.2, second, queue[0].id)
    assert cycle.resolved_at is not None and cycle.resolved_at >= cycle.created_at
    assert everything[(r2, r3, "both_bad")].status == "open"
    settled = everything[(r1, r2, "low_agreement")]  # not flagged again: the labels since settled it
    assert (settled.status, settled.run_id, settled.score) == ("resolved", first, 0.4)
    assert settled.resolved_at is not None
    assert [q.reason for q in store.ambiguity_queue()] == ["both_bad"]  # the latest run's queue only
    assert [q.reason for q in store.ambiguity_queue(status="resolved")] == ["low_agreement", "cycle"]  # by score
    assert len(store.ambiguity_queue(limit=1)) == 1


def test_reversed_pairs_are_stored_lo_below_hi(store: Store) -> None:
    store.import_records(sample_records())
    pid, (r1, r2, _) = _ids(store)
    run = store.save_aggregation({}, [], [PairLabel(pid, r2, r1, 0.75, 4, 1, 0)], [],
                                 [AmbiguousItem(pid, r2, r1, "cycle", 0.3)])
    assert store.aggregation_pair_labels(run) == [PairLabel(pid, r1, r2, 0.25, 4, 1, 0)]
    (queued,) = store.ambiguity_queue()
    assert (queued.response_lo_id, queued.response_hi_id) == (r1, r2)


def test_bad_aggregation_outputs_are_refused(store: Store) -> None:
    store.import_records(sample_records())
    pid, (r1, r2, _) = _ids(store)
    with pytest.raises(InvalidRecordError, match="with itself"):
        store.save_aggregation({}, [], [PairLabel(pid, r1, r1, 0.5, 1, 0, 0)], [], [])
    with pytest.raises(InvalidRecordError, match="not in \\[0, 1\\]"):
        store.save_aggregation({}, [], [PairLabel(pid, r1, r2, 1.5, 1, 0, 0)], [], [])
    with pytest.raises(InvalidRecordError, match="finite"):
        store.save_aggregation({}, [(r1, float("nan"))], [], [], [])
    with pytest.raises(NotFoundError, match="no annotator named 'ghost'"):
        store.save_aggregation({}, [], [], [("ghost", 0.5, 3)], [])
    with pytest.raises(InvalidRecordError, match="queue status"):
        store.ambiguity_queue(status="closed")
    with pytest.raises(NotFoundError, match="no ambiguity-queue item"):
        store.resolve_ambiguous(12345)
    assert store.latest_aggregation() is None  # nothing half-saved
