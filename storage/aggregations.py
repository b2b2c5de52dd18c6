"""Aggregation outputs: runs, response strengths, pair soft labels, annotator reliability, and the
ambiguity queue (items keep their review status when a later run flags them again).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage import models as m
from storage.errors import InvalidRecordError, NotFoundError, StorageError
from storage.registry import to_json
from storage.types import AggregationRun, AmbiguousItem, AnnotatorScore, PairLabel, QueueEntry

DEFAULT_METHOD: Final = "bradley_terry"
_IN_CHUNK: Final = 500
_runs: Final = m.table_of(m.AggregationRun)
_strengths: Final = m.table_of(m.ResponseStrength)
_pairs: Final = m.table_of(m.PairLabel)
_reliability: Final = m.table_of(m.AnnotatorReliability)
_queue: Final = m.table_of(m.AmbiguityItem)
_annotators: Final = m.table_of(m.Annotator)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _bad(problem: str) -> InvalidRecordError:
    return InvalidRecordError(f"cannot save the aggregation: {problem}", "fix the aggregation output; nothing was saved")


def _canonical(pair_labels: Sequence[PairLabel], ambiguous: Sequence[AmbiguousItem]
               ) -> tuple[list[PairLabel], list[AmbiguousItem]]:
    """Pairs ordered lo < hi by id: a reversed pair is flipped (p_lo becomes 1 - p_lo)."""
    labels = [p if p.response_lo_id < p.response_hi_id else replace(
        p, response_lo_id=p.response_hi_id, response_hi_id=p.response_lo_id,
        p_lo=None if p.p_lo is None else 1.0 - p.p_lo) for p in pair_labels]
    items = [a if a.response_lo_id < a.response_hi_id else replace(
        a, response_lo_id=a.response_hi_id, response_hi_id=a.response_lo_id) for a in ambiguous]
    return labels, items


def _check(strengths: Sequence[tuple[str, float]], pair_labels: Sequence[PairLabel],
           reliability: Sequence[tuple[str, float, int]], ambiguous: Sequence[AmbiguousItem]) -> None:
    for response_id, s in strengths:
        if not _finite(s):
            raise _bad(f"strength of response {response_id[:12]} is {s!r}, not a finite number")
    for p in pair_labels:
        if p.response_lo_id == p.response_hi_id:
            raise _bad(f"pair label ({p.response_lo_id[:12]}, {p.response_hi_id[:12]}) pairs a response with itself")
        if p.p_lo is not None and not (_finite(p.p_lo) and 0.0 <= p.p_lo <= 1.0):
            raise _bad(f"p_lo {p.p_lo!r} of pair ({p.response_lo_id[:12]}, {p.response_hi_id[:12]}) is not in [0, 1]")
        if min(p.n_votes, p.n_ties, p.n_both_bad) < 0:
            raise _bad(f"negative vote counts on pair ({p.response_lo_id[:12]}, {p.response_hi_id[:12]})")
    for name, r, n in reliability:
        if not _finite(r) or n < 0:
            raise _bad(f"reliability {r!r} with {n} labels of annotator {name!r} is not a finite number and count")
    for a in ambiguous:
        if a.response_lo_id == a.response_hi_id:
            raise _bad(f"ambiguous pair ({a.response_lo_id[:12]}, {a.response_hi_id[:12]}) pairs a response with itself")
        if not _finite(a.score) or not a.reason:
            raise _bad(f"ambiguous pair ({a.response_lo_id[:12]}, ...) has score {a.score!r} / reason {a.reason!r}")


def _annotator_ids(conn: Connection, names: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    unique = sorted(set(names))
    for start in range(0, len(unique), _IN_CHUNK):
        chunk = unique[start:start + _IN_CHUNK]
        out.update(conn.execute(select(_annotators.c.name, _annotators.c.id)
                                .where(_annotators.c.name.in_(chunk))).all())
    missing = [n for n in unique if n not in out]
    if missing:
        raise NotFoundError(f"cannot save the aggregation: no annotator named {', '.join(map(repr, missing[:5]))}",
                            "pass the annotator names the store returned in comparison_rows / ranking_rows")
    return out


def save(conn: Connection, summary: Mapping[str, Any], strengths: Sequence[tuple[str, float]],
         pair_labels: Sequence[PairLabel], reliability: Sequence[tuple[str, float, int]],
         ambiguous: Sequence[AmbiguousItem], method: str = DEFAULT_METHOD) -> int:
    """Store one run (inside the caller's write transaction); the new run id. Open queue entries the run
    does not flag again are resolved."""
    _check(strengths, pair_labels, reliability, ambiguous)
    pair_labels, ambiguous = _canonical(pair_labels, ambiguous)
    now = datetime.now(UTC)
    summary_json = to_json(dict(summary), "summary")
    ann = _annotator_ids(conn, [name for name, _, _ in reliability])
    inserted = conn.execute(insert(_runs).values(created_at=now, summary=summary_json)).inserted_primary_key
    if inserted is None:
        raise StorageError("the database did not return the new aggregation run's id", "report this as a bug")
    run_id = int(inserted[0])
    if strengths:
        conn.execute(insert(_strengths), [{"run_id": run_id, "response_id": rid, "strength": float(s),
                                           "method": method} for rid, s in strengths])
    if pair_labels:
        conn.execute(insert(_pairs), [
            {"run_id": run_id, "prompt_id": p.prompt_id, "response_lo_id": p.response_lo_id,
             "response_hi_id": p.response_hi_id, "p_lo": None if p.p_lo is None else float(p.p_lo),
             "n_votes": int(p.n_votes), "n_ties": int(p.n_ties), "n_both_bad": int(p.n_both_bad)}
            for p in pair_labels])
    if reliability:
        conn.execute(insert(_reliability), [{"run_id": run_id, "annotator_id": ann[name], "reliability": float(r),
                                             "n_labels": int(n)} for name, r, n in reliability])
    if ambiguous:
        ins = (sqlite.insert(_queue) if conn.dialect.name == "sqlite" else postgresql.insert(_queue))
        upsert = ins.on_conflict_do_update(
            index_elements=["prompt_id", "response_lo_id", "response_hi_id", "reason"],
            set_={"score": ins.excluded.score, "run_id": ins.excluded.run_id})
        conn.execute(upsert, [
            {"prompt_id": a.prompt_id, "response_lo_id": a.response_lo_id, "response_hi_id": a.response_hi_id,
             "reason": a.reason, "score": float(a.score), "status": "open", "run_id": run_id, "created_at": now,
             "resolved_at": None}
            for a in ambiguous])
    # An open entry this run no longer flags was settled by the labels since (a 2:1 pair now 6:2): closed,
    # so the dashboard and the labeling pages show the queue of the latest run only.
    conn.execute(update(_queue).where(_queue.c.status == "open", _queue.c.run_id != run_id)
                 .values(status="resolved", resolved_at=now))
    return run_id


def latest(conn: Connection) -> AggregationRun | None:
    """The newest run, or None before the first."""
    row = conn.execute(select(_runs).order_by(_runs.c.id.desc()).limit(1)).first()
    if row is None:
        return None

    def count(table: Any) -> int:
        return int(conn.execute(select(func.count()).select_from(table).where(table.c.run_id == row.id)).scalar_one())

    return AggregationRun(id=row.id, created_at=row.created_at, summary=dict(row.summary),
                          n_strengths=count(_strengths), n_pair_labels=count(_pairs),
                          n_annotators=count(_reliability), n_ambiguous=count(_queue))


def strengths(conn: Connection, run_id: int, method: str | None = None) -> dict[str, float]:
    """response id -> strength of one run (one method, if given)."""
    stmt = select(_strengths.c.response_id, _strengths.c.strength).where(_strengths.c.run_id == run_id)
    if method is not None:
        stmt = stmt.where(_strengths.c.method == method)
    return dict(conn.execute(stmt).all())


def pair_labels(conn: Connection, run_id: int) -> list[PairLabel]:
    """The pair labels of one run, ordered by (lo, hi)."""
    p = _pairs.c
    stmt = (select(p.prompt_id, p.response_lo_id, p.response_hi_id, p.p_lo, p.n_votes, p.n_ties, p.n_both_bad)
            .where(p.run_id == run_id).order_by(p.response_lo_id, p.response_hi_id))
    return [PairLabel(*row) for row in conn.execute(stmt)]


def annotator_scores(conn: Connection, run_id: int) -> list[AnnotatorScore]:
    """Reliability per annotator in one run, by name."""
    r = _reliability.c
    stmt = (select(_annotators.c.name, r.reliability, r.n_labels)
            .join_from(_reliability, _annotators, _annotators.c.id == r.annotator_id)
            .where(r.run_id == run_id).order_by(_annotators.c.name))
    return [AnnotatorScore(*row) for row in conn.execute(stmt)]


def queue(conn: Connection, *, status: str | None = "open", limit: int | None = None) -> list[QueueEntry]:
    """Ambiguity-queue entries with this status (None = all), highest score first."""
    if status is not None and status not in m.QUEUE_STATUSES:
        raise InvalidRecordError(f"queue status {status!r} is not one of {', '.join(m.QUEUE_STATUSES)}",
                                 "pass status='open', 'resolved' or None (all)")
    if limit is not None and limit < 0:
        raise InvalidRecordError(f"limit must be >= 0, got {limit}", "pass a non-negative limit or None")
    q = _queue.c
    stmt = select(q.id, q.prompt_id, q.response_lo_id, q.response_hi_id, q.reason, q.score, q.status, q.created_at,
                  q.resolved_at, q.run_id).order_by(q.score.desc(), q.id)
    if status is not None:
        stmt = stmt.where(q.status == status)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [QueueEntry(id=r.id, prompt_id=r.prompt_id, response_lo_id=r.response_lo_id, response_hi_id=r.response_hi_id,
                       reason=r.reason, score=r.score, status=r.status, created_at=r.created_at,
                       resolved_at=r.resolved_at, run_id=r.run_id) for r in conn.execute(stmt)]


def resolve(conn: Connection, item_id: int) -> None:
    """Mark a queue entry resolved (resolving a resolved one changes nothing)."""
    q = _queue.c
    status = conn.execute(select(q.status).where(q.id == item_id)).scalar_one_or_none()
    if status is None:
        raise NotFoundError(f"no ambiguity-queue item has id {item_id}", "list the queue and use one of its ids")
    if status != "resolved":
        conn.execute(update(_queue).where(q.id == item_id).values(status="resolved", resolved_at=datetime.now(UTC)))


__all__ = ["DEFAULT_METHOD", "annotator_scores", "latest", "pair_labels", "queue", "resolve", "save", "strengths"]
