"""Reading records back: as records.py dataclasses (export), as columns (aggregation), as counts.

Every reader takes the same filter: `source_ids` (None = all sources) and `snapshot_id` (None =
everything stored; else only the records the snapshot lists). Order is stable: kind by kind in
KINDS order, each kind in insertion (id) order. Large results are streamed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, Select, Table, func, or_, select, union

from storage import models as m
from storage.errors import NotFoundError
from storage.records import Comparison, Demonstration, Feedback, Outcome, Ranking, Rating, Record
from storage.types import ComparisonRows, RankingRow, SourceStats

AnySelect = Select[*tuple[Any, ...]]
STREAM_ROWS: Final = 5000
_IN_CHUNK: Final = 500

_prompts: Final = m.table_of(m.Prompt)
_responses: Final = m.table_of(m.Response)
_items: Final = m.table_of(m.SnapshotItem)


def names(conn: Connection, table: str) -> dict[int, str]:
    """id -> name of sources, annotators or campaigns."""
    t = m.Base.metadata.tables[table]
    return {id_: name for id_, name in conn.execute(select(t.c.id, t.c.name))}


def source_ids(conn: Connection, sources: Sequence[str] | None) -> list[int] | None:
    """The ids of the named sources (None stays None); an unknown name raises NotFoundError."""
    if sources is None:
        return None
    if isinstance(sources, str):
        sources = [sources]
    known = {name: id_ for id_, name in names(conn, "sources").items()}
    missing = [s for s in sources if s not in known]
    if missing:
        listing = ", ".join(sorted(known)) or "none yet"
        raise NotFoundError(f"no source named {', '.join(map(repr, missing))} (stored sources: {listing})",
                            "pick stored source names, or import the data first")
    return sorted({known[s] for s in sources})


def label_filter(t: Table, kind: str, sources: list[int] | None, snapshot_id: str | None) -> list[ColumnElement[bool]]:
    """WHERE clauses selecting the rows of label table `t` in the given sources / snapshot.

    Without a snapshot, the comparisons that migration 0004 marked as a repeat of another one's vote
    (duplicate_of) are left out; a snapshot made before 0004 lists a comparison by the key it had then
    (legacy_key where 0004 changed it) and reads it back, repeat or not, as it read it then."""
    where: list[ColumnElement[bool]] = []
    if sources is not None:
        where.append(t.c.source_id.in_(sources))
    if snapshot_id is None:
        return where + live(t, kind)
    listed = select(_items.c.item_key).where(_items.c.snapshot_id == snapshot_id, _items.c.kind == kind)
    where.append(or_(t.c.key.in_(listed), t.c.legacy_key.in_(listed)) if kind == "comparisons"
                 else t.c.key.in_(listed))
    return where


def live(t: Table, kind: str) -> list[ColumnElement[bool]]:
    """WHERE clauses selecting the rows of label table `t` that count: all but 0004's repeated votes."""
    return [t.c.duplicate_of.is_(None)] if kind == "comparisons" else []


def _stream(conn: Connection, stmt: AnySelect) -> Iterator[Any]:
    yield from conn.execute(stmt, execution_options={"yield_per": STREAM_ROWS})


def iter_records(conn: Connection, *, sources: list[int] | None = None, snapshot_id: str | None = None,
                 kinds: Sequence[str] = m.KINDS) -> Iterator[Record]:
    """Every selected record as a records.py dataclass, kind by kind, in insertion order."""
    src, ann, camp = names(conn, "sources"), names(conn, "annotators"), names(conn, "campaigns")
    who = ann.get
    stmt: AnySelect
    for kind in m.KINDS:
        if kind not in kinds:
            continue
        t = m.Base.metadata.tables[kind]
        where = label_filter(t, kind, sources, snapshot_id)
        common = (t.c.source_id, t.c.annotator_id, t.c.subset, t.c.campaign_id, t.c.external_id,
                  t.c.idempotency_key, t.c.created_at)
        if kind == "comparisons":
            ra, rb = _responses.alias("ra"), _responses.alias("rb")
            stmt = (select(_prompts.c.text, ra.c.text, rb.c.text, t.c.outcome, t.c.confidence, t.c.comment,
                           t.c.agreement, ra.c.model, rb.c.model, *common)
                    .join_from(t, _prompts, _prompts.c.id == t.c.prompt_id)
                    .join(ra, ra.c.id == t.c.response_a_id).join(rb, rb.c.id == t.c.response_b_id))
            for p, a, b, o, conf, comment, agr, ma, mb, s, an, sub, cp, ext, idem, at in _stream(
                    conn, stmt.where(*where).order_by(t.c.id)):
                yield Comparison(source=src[s], prompt=p, response_a=a, response_b=b, outcome=cast(Outcome, o),
                                 annotator=who(an), confidence=conf, comment=comment, agreement=agr, model_a=ma,
                                 model_b=mb, subset=sub, campaign=camp.get(cp), external_id=ext,
                                 idempotency_key=idem, created_at=at)
        elif kind == "rankings":
            yield from _iter_rankings(conn, where, src, ann, camp)
        elif kind in ("ratings", "feedback"):
            own = ((t.c.value, t.c.scale_min, t.c.scale_max, t.c.comment) if kind == "ratings"
                   else (t.c.thumbs_up, t.c.comment))
            stmt = (select(_prompts.c.text, _responses.c.text, _responses.c.model, *own, *common)
                    .join_from(t, _prompts, _prompts.c.id == t.c.prompt_id)
                    .join(_responses, _responses.c.id == t.c.response_id))
            for row in _stream(conn, stmt.where(*where).order_by(t.c.id)):
                p, text, model = row[0], row[1], row[2]
                s, an, sub, cp, ext, idem, at = row[-7:]
                tail: dict[str, Any] = dict(source=src[s], prompt=p, response=text, model=model, annotator=who(an),
                                            subset=sub, campaign=camp.get(cp), external_id=ext,
                                            idempotency_key=idem, created_at=at)
                if kind == "ratings":
                    yield Rating(value=row[3], scale_min=row[4], scale_max=row[5], comment=row[6], **tail)
                else:
                    yield Feedback(thumbs_up=bool(row[3]), comment=row[4], **tail)
        else:
            stmt = select(_prompts.c.text, t.c.text, *common).join_from(t, _prompts, _prompts.c.id == t.c.prompt_id)
            for p, text, s, an, sub, cp, ext, idem, at in _stream(conn, stmt.where(*where).order_by(t.c.id)):
                yield Demonstration(source=src[s], prompt=p, response=text, author=who(an), subset=sub,
                                    campaign=camp.get(cp), external_id=ext, idempotency_key=idem, created_at=at)


def _iter_rankings(conn: Connection, where: list[ColumnElement[bool]], src: dict[int, str], ann: dict[int, str],
                   camp: dict[int, str]) -> Iterator[Ranking]:
    """Rankings joined with their items (one row per item), regrouped in Python."""
    t, it = m.table_of(m.Ranking), m.table_of(m.RankingItem)
    stmt = (select(t.c.id, _prompts.c.text, _responses.c.text, _responses.c.model, t.c.source_id, t.c.annotator_id,
                   t.c.subset, t.c.campaign_id, t.c.external_id, t.c.idempotency_key, t.c.created_at)
            .join_from(t, _prompts, _prompts.c.id == t.c.prompt_id)
            .join(it, it.c.ranking_id == t.c.id).join(_responses, _responses.c.id == it.c.response_id)
            .where(*where).order_by(t.c.id, it.c.position))
    current: int | None = None
    head: tuple[Any, ...] = ()
    texts: list[str] = []
    models: list[str | None] = []

    def build() -> Ranking:
        p, s, an, sub, cp, ext, idem, at = head
        return Ranking(source=src[s], prompt=p, responses=tuple(texts),
                       models=tuple(models) if any(x is not None for x in models) else None,
                       annotator=ann.get(an), subset=sub, campaign=camp.get(cp), external_id=ext,
                       idempotency_key=idem, created_at=at)

    for rid, p, text, model, *rest in _stream(conn, stmt):
        if rid != current:
            if current is not None:
                yield build()
            current, head, texts, models = rid, (p, *rest), [], []
        texts.append(text)
        models.append(model)
    if current is not None:
        yield build()


def comparison_rows(conn: Connection, *, sources: list[int] | None = None,
                    snapshot_id: str | None = None) -> ComparisonRows:
    """The selected comparisons as columns, in insertion order."""
    t = m.table_of(m.Comparison)
    src, ann = names(conn, "sources"), names(conn, "annotators")
    stmt = (select(t.c.prompt_id, t.c.response_a_id, t.c.response_b_id, t.c.outcome, t.c.annotator_id, t.c.source_id)
            .where(*label_filter(t, "comparisons", sources, snapshot_id)).order_by(t.c.id))
    rows = conn.execute(stmt).all()
    if not rows:
        return ComparisonRows((), (), (), (), (), ())
    p, a, b, o, an, s = zip(*rows, strict=True)
    who = ann.get
    return ComparisonRows(prompt_id=p, response_a_id=a, response_b_id=b, outcome=o,
                          annotator=tuple(who(x) for x in an), source=tuple(src[x] for x in s))


def ranking_rows(conn: Connection, *, sources: list[int] | None = None,
                 snapshot_id: str | None = None) -> list[RankingRow]:
    """The selected rankings, response ids best first, in insertion order."""
    t, it = m.table_of(m.Ranking), m.table_of(m.RankingItem)
    src, ann = names(conn, "sources"), names(conn, "annotators")
    stmt = (select(t.c.id, t.c.prompt_id, t.c.annotator_id, t.c.source_id, it.c.response_id)
            .join_from(t, it, it.c.ranking_id == t.c.id)
            .where(*label_filter(t, "rankings", sources, snapshot_id)).order_by(t.c.id, it.c.position))
    out: list[RankingRow] = []
    current: int | None = None
    head: tuple[Any, ...] = ()
    ids: list[str] = []
    for rid, pid, an, s, response_id in conn.execute(stmt):
        if rid != current:
            if current is not None:
                out.append(RankingRow(head[0], tuple(ids), ann.get(head[1]), src[head[2]]))
            current, head, ids = rid, (pid, an, s), []
        ids.append(response_id)
    if current is not None:
        out.append(RankingRow(head[0], tuple(ids), ann.get(head[1]), src[head[2]]))
    return out


def texts(conn: Connection, table: Table, ids: Sequence[str]) -> dict[str, str]:
    """id -> text for the given prompt or response ids (unknown ids are left out)."""
    out: dict[str, str] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), _IN_CHUNK):
        chunk = unique[start:start + _IN_CHUNK]
        out.update(conn.execute(select(table.c.id, table.c.text).where(table.c.id.in_(chunk))).all())
    return out


def _used_ids(by_source: bool) -> dict[str, list[AnySelect]]:
    """Selects of the prompt, response and annotator ids the label tables use (with their source_id first
    when `by_source`), one per table and column: their union is the distinct set."""
    c, rk, ri = m.table_of(m.Comparison), m.table_of(m.Ranking), m.table_of(m.RankingItem)
    rt, fb, dm = m.table_of(m.Rating), m.table_of(m.Feedback), m.table_of(m.Demonstration)

    def sel(table: Any, column: Any) -> Any:
        return select(table.c.source_id, column) if by_source else select(column)

    return {
        "prompts": [sel(t, t.c.prompt_id) for t in (c, rk, rt, fb, dm)],
        "responses": [sel(c, c.c.response_a_id), sel(c, c.c.response_b_id),
                      sel(rk, ri.c.response_id).join_from(rk, ri, ri.c.ranking_id == rk.c.id),
                      sel(rt, rt.c.response_id), sel(fb, fb.c.response_id)],
        "annotators": [sel(t, t.c.annotator_id).where(t.c.annotator_id.is_not(None)) for t in (c, rk, rt, fb, dm)],
    }


def stats(conn: Connection) -> dict[str, SourceStats]:
    """Per source name: records per kind and the distinct prompts, responses and annotators they use."""
    counts: dict[str, dict[int, int]] = {}
    for kind in m.KINDS:
        t = m.Base.metadata.tables[kind]
        counts[kind] = dict(conn.execute(select(t.c.source_id, func.count()).where(*live(t, kind))
                                         .group_by(t.c.source_id)).all())

    def distinct_per_source(selects: list[AnySelect]) -> dict[int, int]:
        u = union(*selects).subquery()
        cols = list(u.c)
        return dict(conn.execute(select(cols[0], func.count()).group_by(cols[0])).all())

    used = {what: distinct_per_source(selects) for what, selects in _used_ids(by_source=True).items()}
    out: dict[str, SourceStats] = {}
    for id_, name in sorted(names(conn, "sources").items(), key=lambda kv: kv[1]):
        out[name] = SourceStats(**{what: n.get(id_, 0) for what, n in used.items()},
                                **{kind: counts[kind].get(id_, 0) for kind in m.KINDS})
    return out


def totals(conn: Connection) -> SourceStats:
    """The whole store's counts: records per kind, and the distinct prompts, responses and annotators the
    records use (one shared by two sources counts once, unlike a sum of `stats`)."""
    tables = m.Base.metadata.tables
    kinds = {kind: int(conn.execute(select(func.count()).select_from(tables[kind])
                                    .where(*live(tables[kind], kind))).scalar_one())
             for kind in m.KINDS}
    used = {what: int(conn.execute(select(func.count()).select_from(union(*selects).subquery())).scalar_one())
            for what, selects in _used_ids(by_source=False).items()}
    return SourceStats(**used, **kinds)


def table_counts(conn: Connection) -> dict[str, int]:
    """Rows per table (all tables), e.g. to show that a failed import changed nothing."""
    parts = [select(func.count().label("n")).select_from(t) for t in m.TABLES]
    return {t.name: int(conn.execute(p).scalar_one()) for t, p in zip(m.TABLES, parts, strict=True)}


__all__ = ["comparison_rows", "iter_records", "label_filter", "live", "names", "ranking_rows", "source_ids",
           "stats", "table_counts", "texts"]
