"""`rewardnode import` / `export-data` user mistakes: one clear line, the right exit code, nothing lost."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from node.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "node" / "samples"
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
RECORDS = [{"prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]


class Cli:
    """The `rewardnode` entry point run in-process against one node home."""

    def __init__(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = main([*args, "--home", str(self.home)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def error(self, code: int, *args: str) -> str:
        """Run a command that must fail with exit `code` and one error line; that line."""
        got, out, err = self(*args)
        assert got == code, (got, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rewardnode: error: "), err
        return lines[0]

    def stats(self) -> dict[str, object]:
        code, out, _ = self("stats", "--json")
        assert code == 0
        return json.loads(out)["sources"]


@pytest.fixture()
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    runner = Cli(tmp_path / "node", capsys)
    assert main(["init", "--name", "qa", "--home", str(runner.home)]) == 0
    capsys.readouterr()
    return runner


def write_jsonl(path: Path, records: list[dict[str, object]], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + extra, encoding="utf-8")
    return path


# ---- 1. the reject file never replaces a file ---------------------------------------------------

def test_rejects_path_that_is_the_input_is_refused_and_the_input_kept(cli: Cli, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "ten.jsonl", RECORDS, '{"x": 1}\n')
    before = data.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(data)
    for rejects in (str(data), str(tmp_path / "." / "ten.jsonl"), str(tmp_path / "link.jsonl")):
        line = cli.error(2, "import", str(data), "--skip-invalid", "--rejects", rejects)
        assert "is the input file" in line and "another path" in line
    assert data.read_bytes() == before
    assert cli.stats() == {}


@pytest.mark.parametrize("given", [True, False])
def test_an_existing_reject_file_is_refused_and_kept(cli: Cli, tmp_path: Path, given: bool) -> None:
    data = write_jsonl(tmp_path / "ten.jsonl", RECORDS, '{"x": 1}\n')
    existing = tmp_path / ("notes.txt" if given else "ten.jsonl.rejects.jsonl")
    existing.write_text("my notes\n")
    flags = ["--rejects", str(existing)] if given else []
    line = cli.error(2, "import", str(data), "--skip-invalid", *flags)
    assert f"{existing} exists; remove it or pass another --rejects path" in line
    assert existing.read_text() == "my notes\n"
    assert cli.stats() == {}


@pytest.mark.parametrize("where, needle", [
    ("nodir/rejects.jsonl", "does not exist; create it (mkdir -p"),
    ("afile.txt/rejects.jsonl", "is a file, not a folder"),
    ("somedir", "is a folder; give a file path"),
    ("newdir/", "is a folder; give a file path"),
])
def test_rejects_path_in_no_folder_or_naming_a_folder_is_refused(cli: Cli, tmp_path: Path, where: str,
                                                                   needle: str) -> None:
    data = write_jsonl(tmp_path / "ten.jsonl", RECORDS, '{"x": 1}\n')
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "somedir").mkdir()
    rejects = str(tmp_path / where) + ("/" if where.endswith("/") else "")
    assert needle in cli.error(2, "import", str(data), "--skip-invalid", "--rejects", rejects)
    assert not (tmp_path / "newdir").exists()
    assert cli.stats() == {}


def test_a_failed_import_removes_the_reject_file_it_began(cli: Cli, tmp_path: Path) -> None:
    text = '{"x": 1}\n' + "".join(json.dumps(r) + "\n" for r in RECORDS * 50)
    data = tmp_path / "cut.jsonl.gz"
    data.write_bytes(gzip.compress(text.encode())[:-20])  # the bad first line is read, then the gzip ends
    line = cli.error(1, "import", str(data), "--skip-invalid")
    assert "truncated or corrupt" in line and "nothing was imported from this file" in line
    assert not (tmp_path / "cut.jsonl.gz.rejects.jsonl").exists()  # a retry is not blocked by it
    assert cli.stats() == {}


# ---- 2./5. paths: one line, never a traceback ---------------------------------------------------

@pytest.mark.parametrize("source", ["", "   "])
def test_a_blank_source_is_a_usage_error(cli: Cli, tmp_path: Path, source: str) -> None:
    data = write_jsonl(tmp_path / "ten.jsonl", RECORDS)
    line = cli.error(2, "import", str(data), "--source", source)
    assert "invalid --source" in line and "use 1-200 characters" in line


@pytest.mark.parametrize("where, force, needle", [
    ("nodir/x.jsonl", False, "the folder"),
    ("somedir", True, "is a folder; give a file path"),
    ("somedir/", False, "is a folder; give a file path"),
    ("afile.txt/x.jsonl", False, "is a file, not a folder"),
])
def test_export_to_a_missing_folder_or_a_folder_is_a_usage_error(cli: Cli, tmp_path: Path, where: str,
                                                                   force: bool, needle: str) -> None:
    (tmp_path / "somedir").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    path = str(tmp_path / where) + ("/" if where.endswith("/") else "")
    line = cli.error(2, "export-data", path, *(["--force"] if force else []))
    assert needle in line
    assert (tmp_path / "somedir").is_dir() and not list((tmp_path / "somedir").iterdir())
    assert (tmp_path / "afile.txt").read_text() == "x"


def test_import_of_a_folder_or_stdin_says_what_it_is(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "somedir").mkdir()
    assert "is a folder; give the path of a JSONL, JSON or CSV file inside it" in cli.error(
        2, "import", str(tmp_path / "somedir"))
    assert "stdin ('-') is not supported; save the data to a file" in cli.error(2, "import", "-")
    assert "no such file" in cli.error(2, "import", str(tmp_path / "missing.jsonl"))


# ---- 3. source names --------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["x\ny", "tab\there", "zero\u200bwidth", "   ", "a" * 201])
def test_a_bad_source_flag_is_refused_before_anything_is_stored(cli: Cli, tmp_path: Path, source: str) -> None:
    data = write_jsonl(tmp_path / "ten.jsonl", RECORDS)
    line = cli.error(2, "import", str(data), f"--source={source}")
    assert line.startswith("rewardnode: error: invalid --source: ") and "use 1-200 characters" in line
    assert cli.stats() == {}


def test_a_record_with_a_bad_source_fails_naming_the_line_or_goes_to_rejects(cli: Cli, tmp_path: Path) -> None:
    records = [{**r, "source": "good-1"} for r in RECORDS]
    records[3]["source"] = "bad\nname"
    data = write_jsonl(tmp_path / "src.jsonl", records)
    line = cli.error(1, "import", str(data))
    assert f"{data}:4: field 'source' is not a valid source name" in line
    assert "nothing was imported from this file" in line
    assert cli.stats() == {}

    code, out, _ = cli("import", str(data), "--skip-invalid")
    assert code == 0 and "9 comparisons added" in out and "skipped 1 invalid records" in out
    (rejected,) = [json.loads(x) for x in (tmp_path / "src.jsonl.rejects.jsonl").read_text().splitlines()]
    assert rejected["line"] == 4 and "not a valid source name" in rejected["reason"]
    assert list(cli.stats()) == ["good-1"]


def test_the_reject_file_of_a_json_file_names_the_record_as_its_error_does(cli: Cli, tmp_path: Path) -> None:
    records: list[dict[str, object]] = [dict(r) for r in RECORDS[:4]]
    records[2] = {"prompt": "p", "chosen": "c"}  # record 3, on lines 14-17 of the indented file
    data = tmp_path / "arr.json"
    data.write_text(json.dumps(records, indent=2), encoding="utf-8")
    assert f"{data}: record 3: missing required field 'rejected'" in cli.error(1, "import", str(data))

    code, out, _ = cli("import", str(data), "--skip-invalid")
    assert code == 0 and "3 comparisons added" in out
    (rejected,) = [json.loads(x) for x in (tmp_path / "arr.json.rejects.jsonl").read_text().splitlines()]
    assert list(rejected) == ["record", "reason", "raw"] and rejected["record"] == 3
    assert "missing required field 'rejected'" in rejected["reason"]
    assert json.loads(rejected["raw"]) == {"prompt": "p", "chosen": "c"}


def test_other_datasets_source_names_are_kept(cli: Cli, tmp_path: Path) -> None:
    records = [{**r, "source": "OpenAssistant oasst1"} for r in RECORDS]
    assert cli("import", str(write_jsonl(tmp_path / "my data (v2).jsonl", records)))[0] == 0
    assert cli("import", str(write_jsonl(tmp_path / "données v2.jsonl", RECORDS)))[0] == 0
    assert sorted(cli.stats()) == ["OpenAssistant oasst1", "données v2"]


def _names_in(text: str) -> set[str]:
    return set(re.findall(r'"source": *"([^"\\]*)"', text))


def test_every_source_name_the_repository_uses_is_valid() -> None:
    from node.importing import source_name_problem

    names = {"hh-rlhf", "hh-rlhf-relabel", "sim-careful", "org-a.votes", "harmless-base", "helpful-online",
             "api", "labeling:helpful-v1"}  # the labeling API's default source and a campaign's
    for path in SAMPLES.rglob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            names |= _names_in(f.read())
    for readme in SHARED_DATA.glob("*/README*"):
        names |= _names_in(readme.read_text(encoding="utf-8"))
    for test in set(Path(__file__).parent.rglob("test_*.py")) - {Path(__file__)}:  # this one holds bad names
        names |= set(re.findall(r'source["\']?\s*[:=]\s*["\']([^"\'\\{}]+)["\']', test.read_text(encoding="utf-8")))
    names -= {"", " ", "   "}  # the tests' deliberately blank ones
    assert {"finegrained-rlhf", "llmbar"} <= names
    assert {n: source_name_problem(n) for n in names if source_name_problem(n)} == {}


# ---- 4. nothing stored: error only when nothing valid was found ---------------------------------

def test_a_file_of_only_invalid_records_is_an_error_naming_the_rejects(cli: Cli, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "allbad.jsonl", [{"x": 1}, {"y": 2}])
    line = cli.error(1, "import", str(data), "--source", "ab", "--skip-invalid")
    assert "nothing was stored: all 2 records" in line and "allbad.jsonl.rejects.jsonl" in line
    assert len((tmp_path / "allbad.jsonl.rejects.jsonl").read_text().splitlines()) == 2
    assert cli.stats() == {}


def test_a_file_of_only_duplicates_is_not_an_error(cli: Cli, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "ten.jsonl", RECORDS)
    assert cli("import", str(data))[0] == 0
    code, out, err = cli("import", str(data))
    assert code == 0 and "error" not in err
    assert "nothing new: all 10 records were already stored" in out


# ---- 6. a failed import says that nothing of the file was kept ----------------------------------

def test_a_failed_import_says_nothing_was_imported(cli: Cli, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "six.jsonl", RECORDS[:5], "{bad json\n" + json.dumps(RECORDS[5]) + "\n")
    line = cli.error(1, "import", str(data))
    assert f"{data}:6: malformed JSON" in line and line.endswith("nothing was imported from this file")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes((SAMPLES / "hh-rlhf" / "dev-sample.jsonl.gz").read_bytes()[:2000])
    line = cli.error(1, "import", str(cut))
    assert "truncated or corrupt" in line and line.endswith("nothing was imported from this file")
    assert cli.stats() == {}


# ---- 7. export-data never writes over the node's own database -----------------------------------

@pytest.mark.parametrize(("suffix", "how"), [
    *((suffix, how) for suffix in ("", "-wal", "-shm", "-journal")
      for how in ("path", "relative", "symlink")),
    ("", "hardlink"),  # the companions exist only while a command has the database open
])
def test_export_over_the_store_or_its_companion_files_is_refused(cli: Cli, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, suffix: str,
                                                                 how: str) -> None:
    assert cli("import", str(write_jsonl(tmp_path / "ten.jsonl", RECORDS)))[0] == 0
    store_file = cli.home / f"store.db{suffix}"
    target = store_file
    if how == "relative":
        monkeypatch.chdir(cli.home.parent)
        target = Path(cli.home.name) / store_file.name
    elif how == "symlink":
        target = tmp_path / "link.jsonl"
        target.symlink_to(store_file)
    elif how == "hardlink":
        target = tmp_path / "hard.jsonl"
        target.hardlink_to(store_file)
    existed = store_file.exists()
    for force in ([], ["--force"]):
        line = cli.error(2, "export-data", str(target), *force)
        assert "file of this node's database" in line and "give another FILE" in line
        assert "--force" not in line
    assert store_file.exists() == existed
    assert cli.stats()["ten"]["comparisons"] == 10  # type: ignore[index]


def test_export_to_an_ordinary_file_beside_the_store_still_works(cli: Cli, tmp_path: Path) -> None:
    assert cli("import", str(write_jsonl(tmp_path / "ten.jsonl", RECORDS)))[0] == 0
    code, out, _ = cli("export-data", str(cli.home / "store.db.jsonl"))
    assert code == 0 and "exported 10 records" in out


# ---- 8. empty files and empty stores -----------------------------------------------------------

def test_an_empty_store_round_trips_and_empty_files_import_nothing(
        cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "empty.jsonl"
    assert cli("export-data", str(export)) == (0, f"exported 0 records to {export} (trl)\n", "")
    header_only = tmp_path / "header.csv"
    header_only.write_text("prompt,chosen,rejected\n")
    empty_list = tmp_path / "list.json"
    empty_list.write_text("[]")
    other = Cli(tmp_path / "other", capsys)
    assert main(["init", "--name", "other", "--home", str(other.home)]) == 0
    capsys.readouterr()
    for path in (export, header_only, empty_list):
        code, out, err = other("import", str(path))
        assert code == 0 and err == "" and out.startswith(f"imported {path} in "), (code, out, err)
        assert out.endswith(": nothing added: the file holds no records\n"), out
    assert other.stats() == {}


# ---- 9. errors in a JSON file name the record, not a line ---------------------------------------

def test_a_json_file_error_names_the_record_number(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "list.json"
    data.write_text(json.dumps([*RECORDS[:2], {"prompt": "p", "chosen": "c"}], indent=2))
    line = cli.error(1, "import", str(data))
    assert line.startswith(f"rewardnode: error: {data}: record 3: missing required field 'rejected'"), line
    assert line.endswith("nothing was imported from this file")
    assert cli.stats() == {}


# ---- 10. the multi export imports back with --format multi ----------------------------------------

def test_a_multi_export_imports_back_with_format_multi(cli: Cli, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [
        *RECORDS[:3],
        {"prompt": "p", "response": "r", "rating": 3, "scale": [1, 7], "annotator": "ann1"},
        {"prompt": "p", "response": "r", "thumbs": "down"},
        {"prompt": "p", "demonstration": "d", "author": "w1"},
        {"type": "ranking", "prompt": "p", "responses": ["x", "y", "z"]},
    ])
    assert cli("import", str(mixed))[0] == 0
    export = tmp_path / "multi.jsonl"
    assert cli("export-data", str(export), "--format", "multi")[0] == 0
    other = Cli(tmp_path / "other", capsys)
    assert main(["init", "--name", "other", "--home", str(other.home)]) == 0
    capsys.readouterr()
    code, out, err = other("import", str(export), "--format", "multi")
    assert code == 0 and err == "", err
    assert other.stats() == cli.stats()


# ---- 11. annotator names cannot forge report lines ----------------------------------------------

def test_invalid_annotator_names_are_refused_and_never_reach_the_report(cli: Cli, tmp_path: Path) -> None:
    forged = "evil\nann1                     0.999  (100 labels)"
    names = ["", "   ", forged, "a1", "a2"]
    records = [{**r, "annotator": name} for r, name in zip(RECORDS, names, strict=False)]
    data = write_jsonl(tmp_path / "names.jsonl", records)
    line = cli.error(1, "import", str(data))
    assert f"{data}:1: field 'annotator' is not a valid name: it is empty" in line
    code, out, _ = cli("import", str(data), "--skip-invalid")
    assert code == 0 and "2 comparisons added" in out and "skipped 3 invalid records" in out
    code, out, _ = cli("aggregate")
    assert code == 0 and "0.999" not in out and "evil" not in out
    code, out, _ = cli("aggregate", "--json")
    assert sorted(a["annotator"] for a in json.loads(out)["annotators"]) == ["a1", "a2"]
