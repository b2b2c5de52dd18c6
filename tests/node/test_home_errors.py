"""A wrong --home, passphrase or key file gets one clear line that names the fix, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_a_home_that_is_a_file_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REWARDNODE_HOME", raising=False)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, err = run(capsys, "init", "--name", "x", "--home", str(afile))
    assert code == 1 and "is a file, not a folder" in err
    code, err = run(capsys, "stats", "--home", str(afile))
    assert code == 1 and "is a file, not a node's home folder" in err and "run `rewardnode init" not in err
    assert afile.read_text() == "mine"


def test_an_empty_passphrase_variable_is_named_and_init_leaves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDNODE_PASSPHRASE", "")
    home = tmp_path / "enc"
    code, err = run(capsys, "init", "--name", "enc", "--encrypt-key", "--home", str(home))
    assert code == 1 and "$REWARDNODE_PASSPHRASE is set but empty" in err
    assert not home.exists() or not any(home.iterdir())  # no store.db without a node.toml and key
    monkeypatch.delenv("REWARDNODE_PASSPHRASE")
    assert run(capsys, "init", "--name", "plain", "--home", str(home))[0] == 0  # the same home still works


def test_a_missing_or_broken_key_file_says_restore_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REWARDNODE_PASSPHRASE", raising=False)
    home = tmp_path / "n"
    assert run(capsys, "init", "--name", "n", "--home", str(home))[0] == 0
    key = home / "identity.key"
    original = key.read_bytes()
    key.unlink()
    code, err = run(capsys, "identity", "--home", str(home))
    assert code == 1 and "restore the file from your backup" in err and "Identity." not in err
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    code, err = run(capsys, "identity", "--home", str(home))
    assert code == 1 and "is not a PEM PKCS8 private key" in err and "restore it from your backup" in err
    assert "Identity." not in err
    key.write_bytes(original)
    assert run(capsys, "identity", "--home", str(home))[0] == 0


@pytest.mark.parametrize("given", ["sqlite:///sub/x.db", "sqlite:///x.db", None])
def test_init_opens_a_relative_db_where_later_commands_look_for_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        given: str | None) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "sub").mkdir(parents=True)
    (elsewhere / "sub").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # a relative path is inside the home, not the current folder
    flags = ["--db", given] if given else []
    assert main(["init", "--name", "rel", "--home", str(home), *flags]) == 0
    db = home / (given or "sqlite:///store.db").removeprefix("sqlite:///")
    assert f"  database  sqlite:///{db}\n" in capsys.readouterr().out
    assert db.is_file() and not list(elsewhere.rglob("*.db"))
    data = tmp_path / "one.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    assert main(["import", str(data), "--home", str(home)]) == 0
    assert main(["stats", "--json", "--home", str(home), *flags]) == 0
    assert '"comparisons": 1' in capsys.readouterr().out  # the database init created and migrated
