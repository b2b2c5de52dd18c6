"""iter_records gives back exactly what was imported (texts byte for byte), and import(export(x)) == x."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import hashing
from storage import models as m
from storage.records import OUTCOMES, Comparison, Demonstration, Feedback, Ranking, Rating, Record
from storage.store import Store
from tests.storage.conftest import sample_records

# Any Unicode text except NUL (PostgreSQL cannot store it; tested in test_import) and lone surrogates.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
NAME = st.none() | st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1,
                           max_size=8)
SMALL = st.sampled_from(["", " ", "\n", "a", "A", "é", "\r\n", "👍", "a\tb", "x" * 40])  # forces collisions
TEXTS = SMALL | TEXT
UNIT = st.none() | st.floats(0.0, 1.0)
WHEN = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8))]))


@st.composite
def common(draw: st.DrawFn) -> dict[str, object]:
    return {"source": draw(st.sampled_from(["s1", "s2", "ünï"])), "subset": draw(NAME), "campaign": draw(NAME),
            "external_id": draw(NAME), "idempotency_key": draw(st.none() | st.sampled_from(["k1", "k2", "k3"])),
            "created_at": draw(WHEN)}


@st.composite
def comparisons(draw: st.DrawFn) -> Comparison:
    a, b = draw(st.lists(TEXTS, min_size=2, max_size=2, unique=True))
    return Comparison(prompt=draw(TEXTS), response_a=a, response_b=b, outcome=draw(st.sampled_from(OUTCOMES)),
                      annotator=draw(NAME), confidence=draw(UNIT), comment=draw(st.none() | TEXTS),
                      agreement=draw(UNIT), model_a=draw(NAME), model_b=draw(NAME), **draw(common()))


@st.composite
def rankings(draw: st.DrawFn) -> Ranking:
    responses = tuple(draw(st.lists(TEXTS, min_size=2, max_size=4, unique=True)))
    models = draw(st.none() | st.lists(NAME, min_size=len(responses), max_size=len(responses)))
    if models is not None and all(x is None for x in models):
        models = None  # all unknown is stored (and read back) as None
    return Ranking(prompt=draw(TEXTS), responses=responses, models=None if models is None else tuple(models),
                   annotator=draw(NAME), **draw(common()))


@st.composite
def ratings(draw: st.DrawFn) -> Rating:
    lo = draw(st.floats(-100, 100))
    hi = lo + draw(st.floats(0.5, 100))
    value = min(max(lo + draw(st.floats(0, 1)) * (hi - lo), lo), hi)
    return Rating(prompt=draw(TEXTS), response=draw(TEXTS), value=value, scale_min=lo, scale_max=hi,
                  annotator=draw(NAME), model=draw(NAME), comment=draw(st.none() | TEXTS), **draw(common()))


@st.composite
def feedback(draw: st.DrawFn) -> Feedback:
    return Feedback(prompt=draw(TEXTS), response=draw(TEXTS), thumbs_up=draw(st.booleans()), annotator=draw(NAME),
                    model=draw(NAME), comment=draw(st.none() | TEXTS), **draw(common()))


@st.composite
def demonstrations(draw: st.DrawFn) -> Demonstration:
    return Demonstration(prompt=draw(TEXTS), response=draw(TEXTS), author=draw(NAME), **draw(common()))


RECORDS = st.lists(st.one_of(comparisons(), rankings(), ratings(), feedback(), demonstrations()), max_size=12)
KIND_ORDER = {Comparison: 0, Ranking: 1, Rating: 2, Feedback: 3, Demonstration: 4}


def _key(r: Record) -> str:
    pid = hashing.prompt_id(r.prompt)
    if isinstance(r, Comparison):
        return hashing.comparison_key(r, pid, hashing.response_id(pid, r.response_a),
                                      hashing.response_id(pid, r.response_b))
    if isinstance(r, Ranking):
        return hashing.ranking_key(r, pid, [hashing.response_id(pid, t) for t in r.responses])
    if isinstance(r, Rating):
        return hashing.rating_key(r, hashing.response_id(pid, r.response))
    if isinstance(r, Feedback):
        return hashing.feedback_key(r, hashing.response_id(pid, r.response))
    return hashing.demonstration_key(r, pid)


def expected_store(records: list[Record]) -> list[Record]:
    """What the store should hold: first record per key / idempotency key, kind by kind in input
    order, each response with the first model any record named for it (None if none did)."""
    models: dict[tuple[str, str], str | None] = {}
    keys: set[tuple[type, str]] = set()
    kept: list[Record] = []
    for r in records:
        mentions: list[tuple[str, str | None]] = []
        if isinstance(r, Comparison):
            mentions = [(r.response_a, r.model_a), (r.response_b, r.model_b)]
        elif isinstance(r, Ranking):
            mentions = list(zip(r.responses, r.models or (None,) * len(r.responses), strict=True))
        elif isinstance(r, Rating | Feedback):
            mentions = [(r.response, r.model)]
        for text, model in mentions:
            if models.get((r.prompt, text)) is None:
                models[(r.prompt, text)] = model
        k, idem = (type(r), _key(r)), (type(r), "idem:" + r.idempotency_key) if r.idempotency_key else None
        if k in keys or (idem is not None and idem in keys):
            continue
        keys.add(k)
        if idem is not None:
            keys.add(idem)
        kept.append(r)

    def with_models(r: Record) -> Record:
        if isinstance(r, Comparison):
            return replace(r, model_a=models[(r.prompt, r.response_a)], model_b=models[(r.prompt, r.response_b)])
        if isinstance(r, Ranking):
            ms = tuple(models[(r.prompt, t)] for t in r.responses)
            return replace(r, models=ms if any(x is not None for x in ms) else None)
        if isinstance(r, Rating | Feedback):
            return replace(r, model=models[(r.prompt, r.response)])
        return r

    return sorted((with_models(r) for r in kept), key=lambda r: KIND_ORDER[type(r)])


def _wipe(store: Store) -> None:
    with store.engine.begin() as conn:
        for table in reversed(m.TABLES):
            conn.execute(sa.delete(table))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS)
def test_iter_records_returns_exactly_what_was_imported(store: Store, records: list[Record]) -> None:
    _wipe(store)
    store.import_records(records, batch_size=5)
    out = list(store.iter_records())
    assert out == expected_store(records)
    for got, want in zip(out, expected_store(records), strict=True):  # == on datetimes ignores the zone
        assert got.created_at is not None and want.created_at is not None
        assert got.created_at.utcoffset() == timedelta(0) and got.created_at == want.created_at


def test_export_then_import_into_an_empty_store_reproduces_it(store: Store, tmp_path: object) -> None:
    store.import_records(sample_records("a") + sample_records("b"))
    exported = list(store.iter_records())
    copy = Store.open(f"sqlite:///{tmp_path}/copy.db")
    try:
        result = copy.import_records(exported)
        assert result.total_added == len(exported)
        assert list(copy.iter_records()) == exported
        assert copy.stats() == store.stats()
        assert copy.create_snapshot().id == store.create_snapshot().id
    finally:
        copy.close()


def test_iter_records_filters_by_source_and_kind(store: Store) -> None:
    records = sample_records("a") + sample_records("b")
    store.import_records(records)
    only_b = list(store.iter_records(sources=["b"]))
    # b's "req-1" comparison repeats a's idempotency key, and b's responses keep a's models
    assert only_b == [r for r in expected_store(records) if r.source == "b"]
    assert len(only_b) == len(records) // 2 - 1
    assert [type(r) for r in store.iter_records(kinds=("rankings",))] == [Ranking, Ranking]
