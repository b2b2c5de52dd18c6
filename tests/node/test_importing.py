"""The importer turns real files into exact records and names the file, line, cause and fix of every bad one."""

from __future__ import annotations

import bz2
import gzip
import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import ImportFormatError
from node.importing import Reject, default_source, iter_records
from storage.records import Comparison, Demonstration, Feedback, Ranking, Rating

SAMPLES = Path(__file__).resolve().parents[2] / "node" / "samples"
GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write dicts as JSON lines and strings verbatim."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def import_error(path: Path, **kwargs: Any) -> ImportFormatError:
    with pytest.raises(ImportFormatError) as info:
        list(iter_records(path, **kwargs))
    return info.value


def one(tmp_path: Path, record: dict[str, Any], **kwargs: Any) -> list[Any]:
    return list(iter_records(write_lines(tmp_path / "in.jsonl", [record]), **kwargs))


# ---- the real shared data sets -----------------------------------------------------------------

@pytest.mark.parametrize(("name", "count", "source"), [
    ("hh-rlhf/dev-sample.jsonl.gz", 1000, "dev-sample"),  # records carry "subset", no "source"
    ("finegrained-rlhf/train.jsonl.gz", 2093, "finegrained-rlhf"),
    ("llmbar/train.jsonl.gz", 697, "llmbar"),
])
def test_real_data_sets_parse_to_the_exact_records(name: str, count: int, source: str) -> None:
    path = SAMPLES / name
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    records = list(iter_records(path))
    assert len(records) == len(raw) == count
    for r, d in zip(records, raw, strict=True):
        assert r == Comparison(source=source, prompt=d["prompt"], response_a=d["chosen"], response_b=d["rejected"],
                               outcome="A", subset=d.get("subset"), external_id=d["id"])
    assert {r.source for r in iter_records(path, source="org-a")} == {"org-a"}


# ---- formats ---------------------------------------------------------------------------------

def test_trl_with_every_optional_field(tmp_path: Path) -> None:
    record = {"id": 17, "source": "crowd", "subset": "helpful", "campaign": "c1", "prompt": "Why?", "chosen": " Yes ",
              "rejected": "No", "annotator": "ann-1", "confidence": 1, "comment": "clear", "agreement": 0.75,
              "model_chosen": "m1", "model_rejected": "m2", "created_at": "2024-05-01T12:30:00Z",
              "idempotency_key": "k1", "annotators": 3, "score_chosen": 9.0}
    assert one(tmp_path, record) == [Comparison(
        source="crowd", prompt="Why?", response_a=" Yes ", response_b="No", outcome="A", annotator="ann-1",
        confidence=1.0, comment="clear", agreement=0.75, model_a="m1", model_b="m2", subset="helpful",
        campaign="c1", external_id="17", idempotency_key="k1",
        created_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC))]


def test_source_precedence_and_default_name(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "org-b.votes.jsonl", [GOOD, {**GOOD, "source": "own"}])
    assert [r.source for r in iter_records(path)] == ["org-b.votes", "own"]
    assert [r.source for r in iter_records(path, source="cli")] == ["cli", "cli"]
    assert default_source("/x/train.jsonl.gz") == "train"
    assert default_source("data.csv") == "data"


def test_trl_conversational_variant_renders_the_prompt_in_hh_convention(tmp_path: Path) -> None:
    record = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
              "chosen": [{"role": "assistant", "content": "Hello!"}],
              "rejected": [{"role": "assistant", "content": "Go away."}]}
    expected = Comparison(source="in", prompt="\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant:",
                          response_a="Hello!", response_b="Go away.", outcome="A")
    assert one(tmp_path, record) == one(tmp_path, record, fmt="trl") == [expected]


def test_conversational_implicit_prompt_is_the_shared_prefix(tmp_path: Path) -> None:
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "times 3?"}]
    record = {"chosen": [*turns, {"role": "assistant", "content": "12"}],
              "rejected": [*turns, {"role": "assistant", "content": "7"}]}
    [c] = one(tmp_path, record, fmt="conversational")
    assert c.prompt == "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: times 3?\n\nAssistant:"
    assert (c.response_a, c.response_b, c.outcome) == ("12", "7", "A")
    diverged = {"chosen": [turns[0], {"role": "assistant", "content": "4"}, *turns[2:], {"role": "assistant", "content": "x"}],
                "rejected": [turns[0], {"role": "assistant", "content": "5"}, *turns[2:], {"role": "assistant", "content": "y"}]}
    assert "differ before their final assistant message" in str(import_error(write_lines(tmp_path / "d.jsonl", [diverged])))
    bad_role = {"chosen": [{"role": "robot", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]}
    assert "user, assistant, system" in str(import_error(write_lines(tmp_path / "r.jsonl", [bad_role])))


def test_hh_splits_at_the_last_assistant_marker(tmp_path: Path) -> None:
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a joke"
    record = {"chosen": prefix + "\n\nAssistant:  Knock knock. \n", "rejected": prefix + "\n\nAssistant: No."}
    for fmt in ("auto", "hh"):
        assert one(tmp_path, record, fmt=fmt) == [Comparison(
            source="in", prompt=prefix + "\n\nAssistant:", response_a="Knock knock.", response_b="No.", outcome="A")]


@pytest.mark.parametrize(("record", "needle"), [
    ({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
     "differ before their last"),
    ({"chosen": "no marker here", "rejected": "\n\nHuman: b\n\nAssistant: y"}, "has no '\\n\\nAssistant:' turn"),
    ({"chosen": "\n\nHuman: a\n\nAssistant:   ", "rejected": "\n\nHuman: a\n\nAssistant: y"}, "is empty"),
])
def test_hh_errors_suggest_an_explicit_prompt(tmp_path: Path, record: dict[str, str], needle: str) -> None:
    message = str(import_error(write_lines(tmp_path / "hh.jsonl", [record])))
    assert needle in message
    if "empty" not in needle:
        assert "--format trl" in message


def test_multi_gives_one_comparison_per_vote_and_one_ranking_per_ranking(tmp_path: Path) -> None:
    record = {"prompt": "q", "source": "crowd", "id": "item-1", "campaign": "c7",
              "responses": ["x", {"text": "y", "model": "m-y"}, "z"],
              "votes": [{"annotator": "a1", "a": 0, "b": 1, "outcome": "A", "confidence": 0.9, "comment": "ok"},
                        {"annotator": "a2", "a": 2, "b": 1, "outcome": "tie", "id": "v2", "idempotency_key": "k2",
                         "created_at": "2024-01-02T03:04:05"}],
              "rankings": [{"annotator": "a3", "order": [1, 2, 0]}, {"annotator": "a4", "order": [2, 0]}]}
    assert one(tmp_path, record, fmt="multi") == [
        Comparison(source="crowd", prompt="q", response_a="x", response_b="y", outcome="A", annotator="a1",
                   confidence=0.9, comment="ok", model_b="m-y", campaign="c7", external_id="item-1"),
        Comparison(source="crowd", prompt="q", response_a="z", response_b="y", outcome="tie", annotator="a2",
                   model_b="m-y", campaign="c7", external_id="v2", idempotency_key="k2",
                   created_at=datetime(2024, 1, 2, 3, 4, 5)),
        Ranking(source="crowd", prompt="q", responses=("y", "z", "x"), models=("m-y", None, None), annotator="a3",
                campaign="c7", external_id="item-1"),
        Ranking(source="crowd", prompt="q", responses=("z", "x"), models=None, annotator="a4", campaign="c7",
                external_id="item-1"),
    ]


@pytest.mark.parametrize(("change", "needle"), [
    ({"votes": [{"a": 0, "b": 1, "outcome": "A"}, {"a": 0, "b": 5, "outcome": "A"}]}, "votes[1]: index b=5 is out of range"),
    ({"votes": [{"a": 0, "b": 1, "outcome": "C"}]}, "votes[0]: unknown outcome \"C\""),
    ({"votes": [{"a": 0, "b": 1}]}, "votes[0]: missing required field 'outcome'"),
    ({"votes": [{"a": 0, "b": 0, "outcome": "A"}]}, "votes[0]: a=0 and b=0 point at identical texts"),
    ({"votes": [{"a": "0", "b": 1, "outcome": "A"}]}, "votes[0]: field 'a' must be an integer index, got string"),
    ({"votes": [], "rankings": [{"order": [0, 0]}]}, "rankings[0]: 'order' ranks the same response text twice"),
    ({"votes": [], "rankings": [{"order": [1]}]}, "rankings[0]: 'order' ranks 1 response(s)"),
    ({"votes": [], "rankings": [{"order": [0, 3]}]}, "rankings[0]: index 3 in 'order' is out of range"),
    ({"votes": []}, "needs at least one vote or ranking"),
    ({"responses": ["x"]}, "at least 2 responses"),
    ({"responses": ["x", " "]}, "responses[1] is empty"),
    ({"idempotency_key": "k"}, "put an idempotency_key on each vote"),
])
def test_multi_errors_name_the_vote(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    good = {"prompt": "q", "responses": ["x", "y", "z"], "votes": [{"a": 0, "b": 1, "outcome": "A"}]}
    error = import_error(write_lines(tmp_path / "m.jsonl", [good, {**good, **change}]), fmt="multi")
    assert error.line == 2 and needle in str(error), str(error)


def test_ratings_feedback_demonstrations_and_typed_records(tmp_path: Path) -> None:
    lines = [
        {"prompt": "p", "response": "r", "rating": 6, "scale": [1, 7], "annotator": "a", "model": "m"},
        {"prompt": "p", "response": "r", "rating": -2.5, "scale": "-3-3"},
        {"prompt": "p", "response": "r", "rating": 0.5, "scale": {"min": 0, "max": 1}, "comment": "meh"},
        {"prompt": "p", "response": "r", "thumbs": "up"},
        {"prompt": "p", "response": "r", "thumbs": False, "model": "m"},
        {"prompt": "p", "response": "r", "feedback": "down"},
        {"prompt": "p", "demonstration": "d", "author": "w1"},
        {"type": "demonstration", "prompt": "p", "response": "d2", "author": "w2"},
        {"type": "ranking", "prompt": "p", "responses": ["best", "worst"], "models": ["m1", None]},
        {"type": "comparison", "prompt": "p", "response_a": "a", "response_b": "b", "outcome": "both_bad"},
    ]
    assert list(iter_records(write_lines(tmp_path / "mixed.jsonl", lines))) == [
        Rating(source="mixed", prompt="p", response="r", value=6.0, scale_min=1.0, scale_max=7.0, annotator="a",
               model="m"),
        Rating(source="mixed", prompt="p", response="r", value=-2.5, scale_min=-3.0, scale_max=3.0),
        Rating(source="mixed", prompt="p", response="r", value=0.5, scale_min=0.0, scale_max=1.0, comment="meh"),
        Feedback(source="mixed", prompt="p", response="r", thumbs_up=True),
        Feedback(source="mixed", prompt="p", response="r", thumbs_up=False, model="m"),
        Feedback(source="mixed", prompt="p", response="r", thumbs_up=False),
        Demonstration(source="mixed", prompt="p", response="d", author="w1"),
        Demonstration(source="mixed", prompt="p", response="d2", author="w2"),
        Ranking(source="mixed", prompt="p", responses=("best", "worst"), models=("m1", None)),
        Comparison(source="mixed", prompt="p", response_a="a", response_b="b", outcome="both_bad"),
    ]


@pytest.mark.parametrize(("fmt", "record", "needle"), [
    ("trl", {"prompt": "p", "response": "r", "rating": 3, "scale": [1, 7]}, "missing required field 'chosen'"),
    ("ratings", GOOD, "missing required field 'response'"),
    ("ratings", {"prompt": "p", "response": "r", "rating": 9, "scale": [1, 7]}, "rating 9 is outside the scale [1, 7]"),
    ("ratings", {"prompt": "p", "response": "r", "rating": 3}, "missing required field 'scale'"),
    ("ratings", {"prompt": "p", "response": "r", "rating": 3, "scale": "1 to 7"}, "is not 'MIN-MAX'"),
    ("ratings", {"prompt": "p", "response": "r", "rating": True, "scale": [0, 1]}, "must be a number, got boolean"),
    ("feedback", {"prompt": "p", "response": "r", "thumbs": "sideways"}, "must be \"up\", \"down\", true or false"),
    ("demonstrations", {"prompt": "p"}, "missing required field 'demonstration'"),
    ("hh", GOOD, "has a 'prompt' field"),
    ("trl", {"type": "rating", "prompt": "p", "response": "r", "rating": 3, "scale": [1, 7]},
     "type 'rating', which --format trl does not hold"),
    ("auto", {"type": "vote", **GOOD}, "unknown record type 'vote'"),
    ("auto", {"prompt": "p", "text": "t"}, "cannot tell what this record is"),
])
def test_forced_formats_and_records_that_do_not_fit(tmp_path: Path, fmt: str, record: dict[str, Any],
                                                     needle: str) -> None:
    error = import_error(write_lines(tmp_path / "f.jsonl", [record]), fmt=fmt)
    assert error.line == 1 and needle in error.problem, str(error)


def test_unknown_format_argument_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="auto, trl, hh"):
        iter_records(tmp_path / "x.jsonl", fmt="parquet")


# ---- bad records -------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "needle"), [
    ('{"prompt": "p", "chosen": "c"', "malformed JSON: Expecting ',' delimiter at column 30"),
    ('{"prompt": "p"} trailing', "malformed JSON: Extra data"),
    ('["p", "c", "r"]', "holds a JSON array, not an object"),
    ({"prompt": "p", "chosen": "c"}, "missing required field 'rejected'"),
    ({"prompt": 5, "chosen": "c", "rejected": "r"}, "field 'prompt' must be a non-empty string, got number 5"),
    ({"prompt": "p", "chosen": ["c"], "rejected": "r"}, "'prompt' is text but 'chosen'/'rejected' are message lists"),
    ({"chosen": ["c"], "rejected": "r"}, "chosen[0] must be a {\"role\", \"content\"} object"),
    ({"prompt": "p", "chosen": "", "rejected": "r"}, "field 'chosen' is empty"),
    ({"prompt": " \n\t", "chosen": "c", "rejected": "r"}, "field 'prompt' is empty"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "'chosen' and 'rejected' are identical"),
    ({"prompt": "p", "response_a": "a", "response_b": "b", "outcome": "a>b"},
     "unknown outcome \"a>b\"; use one of A, B, tie, both_bad"),
    ({**GOOD, "confidence": 1.5}, "confidence 1.5 is outside [0, 1]"),
    ({**GOOD, "agreement": -0.1}, "agreement -0.1 is outside [0, 1]"),
    ({**GOOD, "confidence": "high"}, "field 'confidence' must be a number in [0, 1] or null, got string"),
    ({**GOOD, "created_at": "yesterday"}, "created_at \"yesterday\" is not an ISO-8601 timestamp"),
    ({**GOOD, "source": ""}, "field 'source' must be a non-empty string"),
    ({**GOOD, "outcome": "B"}, "chosen/rejected always means 'A'"),
    ('{"prompt": "p", "chosen": "\\ud800", "rejected": "r"}', "unpaired UTF-16 surrogate"),
    ('{"prompt": "p", "chosen": "c\\u0000", "rejected": "r"}', "NUL character"),
    ({"prompt": "p", "responses": ["a", "b"], "votes": [{"annotator": "x\x00", "a": 0, "b": 1, "outcome": "A"}]},
     "NUL character"),
])
def test_bad_records_name_file_line_cause_and_fix(tmp_path: Path, line: Any, needle: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, line])
    error = import_error(path)
    assert error.line == 2 and needle in str(error), str(error)
    assert str(error).startswith(f"{path}:2: ") and error.fix and error.fix in str(error)


def test_bad_line_3_of_10_yields_two_records_then_raises(tmp_path: Path) -> None:
    lines: list[Any] = [{**GOOD, "prompt": f"p{i}"} for i in range(10)]
    lines[2] = '{"prompt": "p2", "chosen": "c"'
    records = iter_records(write_lines(tmp_path / "bad.jsonl", lines))
    assert [next(records).prompt, next(records).prompt] == ["p0", "p1"]
    with pytest.raises(ImportFormatError) as info:
        next(records)
    assert info.value.line == 3 and str(info.value).startswith(f"{tmp_path / 'bad.jsonl'}:3: malformed JSON")


def test_skip_invalid_reports_every_reject_and_keeps_the_rest(tmp_path: Path) -> None:
    long_prompt = "x" * 5000
    lines: list[Any] = [GOOD, "not json", {**GOOD, "chosen": "r"}, "", {"prompt": long_prompt, "chosen": "c"},
                        {**GOOD, "prompt": "last"}]
    rejected: list[tuple[int, str, str]] = []
    records = list(iter_records(write_lines(tmp_path / "in.jsonl", lines), skip_invalid=True,
                                rejects=lambda r: rejected.append((r.number, r.raw, r.reason))))
    assert [r.prompt for r in records] == ["p", "last"]
    assert [(line, raw[:10]) for line, raw, _ in rejected] == [(2, "not json"), (3, '{"prompt":'), (5, '{"prompt":')]
    assert "malformed JSON" in rejected[0][2] and "identical" in rejected[1][2]
    assert "missing required field 'rejected'" in rejected[2][2] and "add 'rejected'" in rejected[2][2]
    assert len(rejected[2][1]) == 1000  # the raw text is truncated


# ---- lines, encodings and containers ----------------------------------------------------------

def test_a_100_mb_line_fails_without_being_read_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(json.dumps(GOOD).encode() + b"\n")
        f.write(b'{"prompt": "' + b"x" * (100 * 2**20) + b'", "chosen": "c", "rejected": "r"}\n')
        f.write(json.dumps({**GOOD, "prompt": "after"}).encode() + b"\n")
    tracemalloc.start()
    try:
        error = import_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.line == 2
    assert str(error) == (f"{path}:2: line is longer than 16 MiB (16,777,216 bytes, the --max-line-bytes limit); "
                          "split the record or raise --max-line-bytes")
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    rejected: list[int] = []
    kept = list(iter_records(path, skip_invalid=True, rejects=lambda r: rejected.append(r.number)))
    assert [r.prompt for r in kept] == ["p", "after"] and rejected == [2]


def test_line_limit_boundary_counts_bytes_without_the_newline(tmp_path: Path) -> None:
    line = json.dumps({**GOOD, "prompt": "é" * 20})
    limit = len(line.encode())
    path = write_lines(tmp_path / "b.jsonl", [line])
    assert len(list(iter_records(path, max_line_bytes=limit))) == 1
    assert "line is longer than" in str(import_error(path, max_line_bytes=limit - 1))
    assert import_error(path, max_line_bytes=7).line == 1


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "blank.jsonl", ["", GOOD, "   ", "\t", {**GOOD, "chosen": 1}])
    assert import_error(path).line == 5


def test_bad_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n'
                     .encode("latin-1"))
    error = import_error(path)
    assert error.line == 2 and "not valid UTF-8 (byte 0xe9" in error.problem and "iconv" in error.fix


def test_gzip_is_detected_by_magic_bytes_and_a_bom_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "no-suffix.data"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode() * 3))
    assert len(list(iter_records(path))) == 3
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress((json.dumps(GOOD) + "\n").encode() * 2000)[:-30])
    error = import_error(truncated)
    assert "gzip data is truncated or corrupt" in error.problem and "gzip -t" in error.fix


def test_other_compressions_are_refused_clearly_and_empty_files_hold_no_records(tmp_path: Path) -> None:
    bzipped = tmp_path / "x.jsonl.bz2"
    bzipped.write_bytes(bz2.compress(json.dumps(GOOD).encode()))
    assert "bzip2-compressed" in str(import_error(bzipped))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    assert list(iter_records(empty)) == []  # like a header-only CSV or []: the CLI says so, exit 0


@pytest.mark.parametrize("shape", ["array", "records", "data", "one-line-records", "pretty-records"])
def test_json_files(tmp_path: Path, shape: str) -> None:
    items = [{**GOOD, "prompt": "p1"}, {**GOOD, "prompt": "p2"}]
    text = {"array": json.dumps(items, indent=2), "records": json.dumps({"records": items}, indent=1),
            "data": json.dumps({"data": items}), "one-line-records": json.dumps({"records": items}),
            "pretty-records": "{\n" + json.dumps({"records": items})[1:]}[shape]
    path = tmp_path / "file.json"
    path.write_text(text)
    assert [r.prompt for r in iter_records(path)] == ["p1", "p2"]


def test_json_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "file.json"
    path.write_text(json.dumps([GOOD, GOOD, {"prompt": "p", "chosen": "c"}], indent=2))
    error = import_error(path)
    assert error.line == 3 and "missing required field 'rejected'" in error.problem
    rejected: list[Reject] = []
    assert len(list(iter_records(path, skip_invalid=True, rejects=rejected.append))) == 2
    assert (rejected[0].unit, rejected[0].number, rejected[0].where) == ("record", 3, "record 3")
    assert json.loads(rejected[0].raw) == {"prompt": "p", "chosen": "c"}
    path.write_text('[\n  {"prompt": "p",\n   "chosen": }\n]')
    broken = import_error(path)
    assert broken.line == 0 and "malformed JSON: Expecting value at line 3 column 14" in broken.problem
    path.write_text(json.dumps([GOOD] * 50))
    big = import_error(path, max_json_bytes=1000)
    assert "larger than 1,000 bytes" in big.problem and "JSONL" in big.fix
    path.write_text(json.dumps({"items": [GOOD]}, indent=2))
    assert "no 'records' or 'data' list" in import_error(path).problem


# ---- CSV ---------------------------------------------------------------------------------------

def test_csv_layouts_detected_by_header(tmp_path: Path) -> None:
    path = tmp_path / "votes.csv"
    path.write_text('prompt,chosen,rejected,id\n"Hi, there","say ""yes""","multi\nline",7\n', encoding="utf-8")
    assert list(iter_records(path)) == [Comparison(source="votes", prompt="Hi, there", response_a='say "yes"',
                                                   response_b="multi\nline", outcome="A", external_id="7")]
    path.write_text("prompt,response_a,response_b,outcome,annotator,confidence,comment\n"
                    "p,a,b,tie,ann,0.5,\np,a,b,B,ann,,why\n")
    assert list(iter_records(path)) == [
        Comparison(source="votes", prompt="p", response_a="a", response_b="b", outcome="tie", annotator="ann",
                   confidence=0.5),
        Comparison(source="votes", prompt="p", response_a="a", response_b="b", outcome="B", annotator="ann",
                   comment="why")]
    path.write_text("prompt,response,rating,scale_min,scale_max\np,r,4,1,5\n")
    assert list(iter_records(path)) == [Rating(source="votes", prompt="p", response="r", value=4.0, scale_min=1.0,
                                               scale_max=5.0)]
    path.write_text("prompt,response,thumbs\np,r,down\np,r,TRUE\n")
    assert [r.thumbs_up for r in iter_records(path)] == [False, True]  # type: ignore[union-attr]
    path.write_text("prompt\tdemonstration\tauthor\np\td\tw\n")
    assert list(iter_records(path)) == [Demonstration(source="votes", prompt="p", response="d", author="w")]


def test_csv_gzip_and_errors_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(b'prompt,chosen,rejected\np,"a\nb",r\np,c,c\n'))
    error = import_error(path)
    assert error.line == 4 and "identical" in error.problem  # the quoted newline makes record 2 start on line 4
    path.write_bytes(gzip.compress(b"prompt,chosen,rejected\np,a\n"))
    assert "the row has 2 fields but the header has 3" in import_error(path).problem
    path.write_bytes(gzip.compress(b"prompt,response,rating,scale_min,scale_max\np,r,lots,1,5\n"))
    assert "column 'rating' must be a number, got 'lots'" in import_error(path).problem
    path.write_bytes(gzip.compress(b"question,answer\nq,a\n"))
    header = import_error(path)
    assert header.line == 1 and "known header" in header.problem and "prompt,chosen,rejected" in header.fix


# ---- robustness ------------------------------------------------------------------------------

KEYS = ["type", "prompt", "chosen", "rejected", "response_a", "response_b", "outcome", "responses", "votes",
        "rankings", "a", "b", "order", "rating", "scale", "thumbs", "feedback", "demonstration", "response",
        "confidence", "agreement", "created_at", "id", "source", "models", "role", "content", "text", "min", "max"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", " ", "A", "tie", "up", "1-7", "user", "assistant", "2024-01-01", "\n\nAssistant: x"])
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8),
       fmt=st.sampled_from(["auto", "trl", "hh", "conversational", "multi", "ratings", "feedback", "demonstrations"]))
def test_any_json_object_gives_records_or_an_import_format_error(tmp_path: Path, record: dict[str, Any],
                                                                 fmt: str) -> None:
    path = write_lines(tmp_path / "fuzz.jsonl", [record])
    try:
        records = list(iter_records(path, fmt=fmt))
    except ImportFormatError as exc:
        assert exc.line == 1 and exc.problem and exc.fix
    else:
        assert records and all(r.prompt.strip() for r in records)


def test_created_at_keeps_offsets(tmp_path: Path) -> None:
    [c] = one(tmp_path, {**GOOD, "created_at": "2024-05-01T12:30:00.123456+05:30"})
    assert c.created_at == datetime(2024, 5, 1, 7, 0, 0, 123456, tzinfo=UTC)
    assert c.created_at.utcoffset() == timedelta(hours=5, minutes=30)


def test_crlf_line_endings_and_leading_blanks_parse(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\r\n  " + json.dumps(GOOD).encode() + b"  \r\n" + json.dumps({**GOOD, "prompt": "q"}).encode()
                     + b"\r\n")
    assert [r.prompt for r in iter_records(path)] == ["p", "q"]


def test_nul_characters_are_refused_in_csv_and_json_too(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("prompt,chosen,rejected\np,c,r\np,c\x00,r\n", encoding="utf-8")
    error = import_error(csv_path)
    assert error.line == 3 and "NUL character" in str(error)
    json_path = tmp_path / "bad.json"
    json_path.write_text(json.dumps([GOOD, {**GOOD, "prompt": "a\x00b"}]), encoding="utf-8")
    error = import_error(json_path)
    assert error.line == 2 and "NUL character" in str(error)
    # a literal backslash-u0000 in the text is fine: only a real NUL is refused
    ok = write_lines(tmp_path / "ok.jsonl", [{**GOOD, "prompt": "type \\u0000 to escape"}])
    assert [r.prompt for r in iter_records(ok)] == ["type \\u0000 to escape"]
