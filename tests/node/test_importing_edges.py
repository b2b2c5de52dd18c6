"""Inputs at the edges of what the importer reads: each is a record error or an exact import, never a crash
or a silently dropped record."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from node.exporting import write_records
from node.formats import ParseContext, RecordError, parser_for
from node.formats.decoding import check_surrogates
from node.importing import JsonRecordError, Reject, _preview, iter_records
from storage.records import Comparison, Demonstration, Feedback, Ranking, Rating, Record
from tests.node.test_importing import import_error, write_lines

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}
DEEP = "[" * 100_000 + "]" * 100_000  # far past the JSON decoder's recursion limit




def skipped(path: Path, **kwargs: Any) -> tuple[list[Record], list[tuple[int, str, str]]]:
    """The records of `path` read with skip_invalid, and the (line, raw, reason) of every skipped one."""
    rejected: list[tuple[int, str, str]] = []
    def collect(r: Reject) -> None:
        rejected.append((r.number, r.raw, r.reason))

    records = list(iter_records(path, skip_invalid=True, rejects=collect, **kwargs))
    return records, rejected


# ---- numbers and nesting no JSON decoder or float can hold ----------------------------------------

@pytest.mark.parametrize("where", ["scale", "rating", "scale_max"])
def test_an_integer_beyond_float_range_is_a_record_error(tmp_path: Path, where: str) -> None:
    huge = 10 ** 400
    record: dict[str, Any] = {"prompt": "p", "response": "r", "rating": 3, "scale": [1, 7]}
    if where == "scale":
        record["scale"] = [1, huge]
    elif where == "rating":
        record["rating"] = huge
    else:
        del record["scale"]
        record.update(scale_min=1, scale_max=huge)
    good = {"prompt": "p", "response": "r", "rating": 3, "scale": [1, 7]}
    path = write_lines(tmp_path / "huge.jsonl", [record, good])
    error = import_error(path)
    assert error.line == 1 and "not a finite number" in error.problem, str(error)
    assert "1000000" in error.problem and "1.8e308" in error.fix
    field = {"scale": "scale[1]", "rating": "rating", "scale_max": "scale_max"}[where]
    assert f"field '{field}'" in error.problem
    records, rejected = skipped(path)
    assert [type(r) for r in records] == [Rating] and [line for line, _, _ in rejected] == [1]


def test_jsonl_line_nested_too_deeply_is_a_skippable_record_error(tmp_path: Path) -> None:
    deep = '{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + DEEP + "}"
    for first in (True, False):  # the first line is also what the format is detected from
        path = write_lines(tmp_path / "deep.jsonl", [deep, GOOD] if first else [GOOD, deep])
        bad = 1 if first else 2
        error = import_error(path)
        assert error.line == bad and "nests arrays or objects too deeply" in error.problem, str(error)
        records, rejected = skipped(path)
        assert len(records) == 1 and [line for line, _, _ in rejected] == [bad]
        assert "too deeply" in rejected[0][2] and rejected[0][1].startswith('{"prompt"')


def test_json_file_nested_too_deeply_is_a_clear_file_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('[{"prompt": "q", "chosen": "a", "rejected": "b", "x": ' + DEEP + "}]")
    for skip in (False, True):
        error = import_error(path, skip_invalid=skip)
        assert error.line == 0 and "too deeply" in error.problem and "nested value" in error.fix, str(error)


def test_values_decoded_near_the_limit_do_not_crash_the_checks_or_messages() -> None:
    # The decoder follows a value just under the recursion limit that json.dumps, called deeper in the
    # stack (error previews, the surrogate check), cannot: built here directly, deeper than either.
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(RecordError, match="must be a string .* got array \\(a deeply nested value\\)"):
        parser_for("auto")({**GOOD, "annotator": nested}, ParseContext(source=None, default_source="f"))
    with pytest.raises(RecordError, match="too deeply"):
        check_surrogates({**GOOD, "x": nested})
    assert _preview({**GOOD, "x": nested}) == "(a record nested too deeply to show)"


# ---- what is a container of records -----------------------------------------------------------

def test_a_record_with_a_data_or_records_list_is_a_record(tmp_path: Path) -> None:
    for key in ("data", "records"):
        one = write_lines(tmp_path / "one.jsonl", [{**GOOD, key: []}])
        assert list(iter_records(one)) == [Comparison("one", "q", "a", "b", "A")]
        two = write_lines(tmp_path / "two.jsonl", [{**GOOD, key: []}, {**GOOD, "prompt": "q2", key: [1]}])
        assert [r.prompt for r in iter_records(two)] == ["q", "q2"]
        demonstration = {"type": "demonstration", "prompt": "q", "response": "d", key: [GOOD]}
        typed = write_lines(tmp_path / "typed.jsonl", [demonstration])
        assert list(iter_records(typed)) == [Demonstration("typed", "q", "d")]
    pretty = tmp_path / "pretty.json"  # a whole .json file holding one record object
    pretty.write_text(json.dumps({**GOOD, "data": [GOOD]}, indent=2))
    assert list(iter_records(pretty)) == [Comparison("pretty", "q", "a", "b", "A")]


def test_a_container_line_followed_by_more_lines_is_read_as_jsonl(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [{"data": [GOOD]}, GOOD])
    error = import_error(path)  # a line without record keys is not a record: said, not dropped
    assert error.line == 1 and "cannot tell what this record is" in error.problem
    single = write_lines(tmp_path / "single.jsonl", [{"records": [GOOD, {**GOOD, "prompt": "q2"}]}, "", "  "])
    assert [r.prompt for r in iter_records(single)] == ["q", "q2"]


# ---- where an error is ------------------------------------------------------------------------

def test_json_file_errors_name_the_record_number(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([GOOD, "not an object", {"prompt": "p", "chosen": "c"}], indent=2))
    error = import_error(path)
    assert isinstance(error, JsonRecordError) and error.line == 2
    assert str(error) == (f"{path}: record 2: the record is a JSON string, not an object; make every list "
                          "item a record object")
    records, rejected = skipped(path)
    assert len(records) == 1 and [line for line, _, _ in rejected] == [2, 3]
    whole = tmp_path / "whole.json"
    whole.write_text("[1,")
    assert not isinstance(import_error(whole), JsonRecordError)  # the file as a whole: FILE: problem
    lines = write_lines(tmp_path / "lines.jsonl", [GOOD, {"prompt": "p", "chosen": "c"}])
    assert str(import_error(lines)).startswith(f"{lines}:2: missing required field 'rejected'")


# ---- encodings --------------------------------------------------------------------------------

@pytest.mark.parametrize(("encoding", "code"), [("utf-16", "utf-16"), ("utf-16-be", "utf-16be"),
                                                ("utf-16-le", "utf-16le"), ("utf-32", "utf-32")])
@pytest.mark.parametrize("content", ["prompt,chosen,rejected\r\np,a,b\r\n", json.dumps(GOOD) + "\n"])
def test_utf16_and_utf32_files_get_the_iconv_command_that_converts_them(
        tmp_path: Path, encoding: str, code: str, content: str) -> None:
    path = tmp_path / "wide.csv"
    data = content.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # Python writes no BOM for an explicit byte order
        code = "utf-16"
    for raw in (data, gzip.compress(data)):
        path.write_bytes(raw)
        error = import_error(path)
        assert error.line == 0 and "only UTF-8 is read" in error.problem, str(error)
        assert f"iconv -f {code} -t utf-8" in error.fix and "latin1" not in error.fix


# ---- round trips ------------------------------------------------------------------------------

def test_forced_multi_reads_back_every_line_the_multi_export_writes(tmp_path: Path) -> None:
    records: list[Record] = [
        Comparison("s", "p", "a", "b", "A", annotator="ann1"),
        Comparison("s", "p", "a", "b", "tie", annotator="ann2"),
        Ranking("s", "p", ("a", "b", "c"), annotator="ann3"),
        Rating("s", "p", "a", 3.0, 1.0, 7.0, annotator="ann1"),
        Feedback("s", "p", "a", True),
        Demonstration("s", "p", "d", author="w1"),
    ]
    path = tmp_path / "multi.jsonl"
    write_records(path, records, fmt="multi")
    key = repr
    assert sorted(map(key, iter_records(path, fmt="multi"))) == sorted(map(key, records))


def test_an_empty_file_holds_no_records(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    write_records(empty, [])  # what export-data writes for an empty store
    assert empty.read_bytes() == b""
    zipped = tmp_path / "empty.jsonl.gz"
    write_records(zipped, [])
    blank = tmp_path / "blank.csv"
    blank.write_text("\n \n")
    for path in (empty, zipped, blank):
        assert list(iter_records(path)) == []


# ---- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "   ", "evil\nann1   0.999 (100 labels)", "tab\there", "x" * 201,
                                  "a\x1b[2J"])
@pytest.mark.parametrize("shape", ["trl", "multi-vote", "multi-ranking", "rating", "feedback",
                                   "demonstration", "csv"])
def test_invalid_annotator_and_author_names_are_record_errors(tmp_path: Path, name: str, shape: str) -> None:
    records: dict[str, dict[str, Any]] = {
        "trl": {**GOOD, "annotator": name},
        "multi-vote": {"prompt": "p", "responses": ["a", "b"], "votes": [{"annotator": name, "a": 0, "b": 1,
                                                                          "outcome": "A"}]},
        "multi-ranking": {"prompt": "p", "responses": ["a", "b"],
                          "rankings": [{"annotator": name, "order": [1, 0]}]},
        "rating": {"prompt": "p", "response": "r", "rating": 3, "scale": [1, 7], "annotator": name},
        "feedback": {"prompt": "p", "response": "r", "thumbs": "up", "annotator": name},
        "demonstration": {"prompt": "p", "demonstration": "d", "author": name},
    }
    if shape == "csv":
        path = tmp_path / "names.csv"
        quoted = '"' + name + '"'
        path.write_text(f"prompt,response_a,response_b,outcome,annotator\np,a,b,A,{quoted}\np,a,b,B,ok\n")
        if not name.strip():  # an empty CSV cell means "no annotator"
            assert [r.annotator for r in iter_records(path)] == [None, "ok"]
            return
    else:
        path = write_lines(tmp_path / "names.jsonl", [records[shape], GOOD])
    error = import_error(path)
    key = "author" if shape == "demonstration" else "annotator"
    line = 2 if shape == "csv" else 1
    assert error.line == line and f"field '{key}' is not a valid name" in error.problem, str(error)
    assert "no control characters" in error.fix
    kept, rejected = skipped(path)
    assert len(kept) == 1 and [line for line, _, _ in rejected] == [line]


def test_valid_annotator_names_are_kept_exactly(tmp_path: Path) -> None:
    names = ["ann-1", "Ann Smith", "données/v2", "x" * 200, " padded "]
    records = [{**GOOD, "prompt": f"p{i}", "annotator": n} for i, n in enumerate(names)]
    path = write_lines(tmp_path / "ok.jsonl", [*records, {**GOOD, "annotator": 17}])
    assert [r.annotator for r in iter_records(path)] == [*names, "17"]
