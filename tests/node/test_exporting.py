"""Exports re-import to the same multiset of records, in both formats, and trl lines are what TRL reads."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.exporting import write_records
from node.importing import iter_records, source_name_problem
from storage.records import OUTCOMES, Comparison, Demonstration, Feedback, Ranking, Rating, Record

SAMPLES = Path(__file__).resolve().parents[2] / "node" / "samples"

# ---- strategies ------------------------------------------------------------------------------

# NUL is left out: import refuses it (PostgreSQL cannot store it), see test_importing.py.
TRICKY = ["a,b", 'say "hi"', "line1\nline2", "\n\nHuman: q\n\nAssistant:", "ü€😀", "tab\there", "\\u0041", "{}"]
chars = st.characters(codec="utf-8", exclude_characters="\x00")
text = (st.text(chars, min_size=1, max_size=40) | st.sampled_from(TRICKY)).filter(lambda s: not s.isspace())
shared_text = st.sampled_from(["p1", "p2", "x", "y", "z"]) | text  # shared prompts/responses make groups
name = st.text(chars, min_size=1, max_size=12).filter(lambda s: not s.isspace())
maybe_name = st.none() | name
unit = st.none() | st.floats(0, 1)
timezones = st.none() | st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60, 23 * 60))
created = st.none() | st.datetimes(timezones=timezones)
source = st.sampled_from(["org-a", "org-b", "OpenAssistant oasst1"]) | name.filter(  # import refuses control characters
    lambda s: source_name_problem(s) is None)
# annotator and author names: import refuses control characters (categories C*) there too
person_chars = st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn"))
maybe_person = st.none() | st.text(person_chars, min_size=1, max_size=12).filter(lambda s: not s.isspace())
common = {"source": source, "subset": st.none() | st.just("harmless"), "campaign": maybe_name,
          "external_id": maybe_name, "idempotency_key": maybe_name, "created_at": created}


def common_fields(draw: st.DrawFn) -> dict[str, Any]:
    return {key: draw(strategy) for key, strategy in common.items()}


@st.composite
def comparisons(draw: st.DrawFn) -> Comparison:
    a = draw(shared_text)
    b = draw(shared_text.filter(lambda s: s != a))
    return Comparison(prompt=draw(shared_text), response_a=a, response_b=b, outcome=draw(st.sampled_from(OUTCOMES)),
                      annotator=draw(maybe_person), confidence=draw(unit), comment=draw(st.none() | text),
                      agreement=draw(unit), model_a=draw(maybe_name), model_b=draw(maybe_name),
                      **common_fields(draw))


@st.composite
def rankings(draw: st.DrawFn) -> Ranking:
    responses = tuple(draw(st.lists(shared_text, min_size=2, max_size=4, unique=True)))
    models = draw(st.none() | st.tuples(*[maybe_name] * len(responses)))
    if models is not None and all(m is None for m in models):
        models = None  # the importer's normal form: no known model is models=None
    return Ranking(prompt=draw(shared_text), responses=responses, models=models, annotator=draw(maybe_person),
                   **common_fields(draw))


@st.composite
def ratings(draw: st.DrawFn) -> Rating:
    lo, hi = sorted(draw(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2, unique=True)))
    return Rating(prompt=draw(text), response=draw(text), value=draw(st.floats(lo, hi)), scale_min=lo, scale_max=hi,
                  annotator=draw(maybe_person), model=draw(maybe_name), comment=draw(st.none() | text),
                  **common_fields(draw))


feedback = st.builds(Feedback, prompt=text, response=text, thumbs_up=st.booleans(), annotator=maybe_person,
                     model=maybe_name, comment=st.none() | text, **common)
demonstrations = st.builds(Demonstration, prompt=text, response=text, author=maybe_person, **common)
records = st.lists(comparisons() | rankings() | ratings() | feedback | demonstrations, max_size=12)


def round_trip(items: list[Record], fmt: str, suffix: str, import_fmt: str = "auto") -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"export{suffix}"
        assert write_records(path, items, fmt=fmt) == len(items)
        assert [p.name for p in Path(tmp).iterdir()] == [path.name]  # no leftover .partial file
        return list(iter_records(path, fmt=import_fmt)) if items else []


# ---- round trips ---------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(items=records, fmt=st.sampled_from(["trl", "multi"]), suffix=st.sampled_from([".jsonl", ".jsonl.gz"]))
def test_every_record_round_trips(items: list[Record], fmt: str, suffix: str) -> None:
    assert Counter(round_trip(items, fmt, suffix)) == Counter(items)


@settings(max_examples=60, deadline=None)
@given(items=st.lists(comparisons(), max_size=10))
def test_comparisons_round_trip_through_the_forced_trl_format(items: list[Record]) -> None:
    assert Counter(round_trip(items, "trl", ".jsonl", import_fmt="trl")) == Counter(items)


@settings(max_examples=60, deadline=None)
@given(items=records)  # votes and rankings as multi lines, the other records as typed lines
def test_every_record_round_trips_through_the_forced_multi_format(items: list[Record]) -> None:
    assert Counter(round_trip(items, "multi", ".jsonl", import_fmt="multi")) == Counter(items)


@pytest.mark.parametrize("fmt", ["trl", "multi"])
def test_real_sample_round_trips(tmp_path: Path, fmt: str) -> None:
    original = list(iter_records(SAMPLES / "hh-rlhf" / "dev-sample.jsonl.gz"))
    path = tmp_path / "out.jsonl.gz"
    assert write_records(path, original, fmt=fmt) == 1000
    assert Counter(iter_records(path)) == Counter(original)


# ---- what the lines look like -----------------------------------------------------------------

def read_lines(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_trl_lines_are_trl_for_outcome_a_and_typed_otherwise(tmp_path: Path) -> None:
    a = Comparison(source="s", prompt="p", response_a="good", response_b="bad", outcome="A", model_a="m1",
                   external_id="e1", confidence=0.5)
    tie = Comparison(source="s", prompt="p", response_a="x", response_b="y", outcome="tie", annotator="ann")
    rating = Rating(source="s", prompt="p", response="r", value=3.0, scale_min=1.0, scale_max=5.0)
    path = tmp_path / "out.jsonl"
    write_records(path, [a, tie, rating], fmt="trl")
    assert read_lines(path) == [
        {"source": "s", "prompt": "p", "chosen": "good", "rejected": "bad", "model_chosen": "m1", "confidence": 0.5,
         "id": "e1"},
        {"type": "comparison", "source": "s", "prompt": "p", "response_a": "x", "response_b": "y", "outcome": "tie",
         "annotator": "ann"},
        {"type": "rating", "source": "s", "prompt": "p", "response": "r", "rating": 3.0, "scale": [1.0, 5.0]},
    ]


def test_multi_groups_votes_on_one_prompt(tmp_path: Path) -> None:
    votes = [Comparison(source="s", prompt="q", response_a="x", response_b="y", outcome="A", annotator="a1"),
             Comparison(source="s", prompt="q", response_a="y", response_b="x", outcome="B", annotator="a2"),
             Comparison(source="s", prompt="q", response_a="x", response_b="z", outcome="tie", annotator="a1")]
    ranking = Ranking(source="s", prompt="q", responses=("z", "x"), models=("m", None), annotator="a3")
    other = Comparison(source="t", prompt="q", response_a="x", response_b="y", outcome="A")
    path = tmp_path / "multi.jsonl"
    assert write_records(path, [*votes, ranking, other], fmt="multi") == 5
    assert read_lines(path) == [
        {"source": "s", "prompt": "q", "responses": ["x", "y", "z", {"text": "z", "model": "m"}],
         "votes": [{"a": 0, "b": 1, "outcome": "A", "annotator": "a1"}, {"a": 1, "b": 0, "outcome": "B", "annotator": "a2"},
                   {"a": 0, "b": 2, "outcome": "tie", "annotator": "a1"}],
         "rankings": [{"order": [3, 0], "annotator": "a3"}]},
        {"source": "t", "prompt": "q", "responses": ["x", "y"], "votes": [{"a": 0, "b": 1, "outcome": "A"}]},
    ]


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    items = list(iter_records(SAMPLES / "llmbar" / "train.jsonl.gz"))[:50]
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_records(first, items, fmt="trl")
    write_records(second, items, fmt="trl")
    assert first.read_bytes()[:2] == b"\x1f\x8b" and first.read_bytes() == second.read_bytes()


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    def failing() -> Iterator[Record]:
        yield Comparison(source="s", prompt="p", response_a="a", response_b="b", outcome="A")
        raise RuntimeError("database went away")

    path = tmp_path / "out.jsonl.gz"
    with pytest.raises(RuntimeError, match="database went away"):
        write_records(path, failing(), fmt="trl")
    assert list(tmp_path.iterdir()) == []


def test_unknown_export_format_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use one of trl, multi"):
        write_records(tmp_path / "x.jsonl", [], fmt="csv")


def test_an_export_never_touches_a_file_named_like_its_temporary(tmp_path: Path) -> None:
    mine = tmp_path / "out.jsonl.partial"
    mine.write_text("the user's own file")
    item = Comparison(prompt="p", response_a="a", response_b="b", outcome="A", source="s")
    assert write_records(tmp_path / "out.jsonl", [item]) == 1
    assert mine.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.partial"]
