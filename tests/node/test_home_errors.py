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


# ---- misspelt names in node.toml ----------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "needles"), [
    (('url = "sqlite:///store.db"', 'ulr = "postgresql+psycopg://u@db.example/prefs"'),
     ("unknown key 'ulr' in [storage]", "the known keys there are url")),
    (('name = "n"', 'name = "n"\nnmae = "x"'),
     ("unknown key 'nmae' in [node]", "the known keys there are name")),
    (("encrypted = false", "encrpyted = true"),
     ("unknown key 'encrpyted' in [identity]", "the known keys there are key_file, encrypted")),
    (("[identity]", "[serevr]\nport = 8080\n\n[identity]"),
     ("unknown table [serevr]", "[node], [storage], [identity], [server], [p2p], [rl], [rm]")),
])
def test_misspelt_names_in_node_toml_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 edit: tuple[str, str], needles: tuple[str, ...]) -> None:
    """A misspelt key is not silently ignored: `ulr =` used to send every write to a new SQLite file."""
    home = tmp_path / "n"
    assert run(capsys, "init", "--name", "n", "--home", str(home))[0] == 0
    config = home / "node.toml"
    text = config.read_text(encoding="utf-8")
    assert text.count(edit[0]) == 1
    config.write_text(text.replace(edit[0], edit[1]), encoding="utf-8")
    before = sorted(p.name for p in home.iterdir())
    code, err = run(capsys, "stats", "--home", str(home))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(config) in err and "fix the name" in err
    for needle in needles:
        assert needle in err, err
    assert sorted(p.name for p in home.iterdir()) == before  # no new store anywhere


def test_every_table_a_subsystem_reads_is_accepted(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n"
    assert run(capsys, "init", "--name", "n", "--home", str(home))[0] == 0
    token = f'[[server.tokens]]\nsha256 = "{"0" * 64}"\nrole = "scorer"\nname = "app"\n'
    with (home / "node.toml").open("a", encoding="utf-8") as f:
        f.write(f"\n[server]\nport = 8080\nsecure_cookies = true\n{token}\n[p2p]\ndht = false\n\n"
                "[rl]\nsteps = 3\n\n[rm]\nepochs = 1\n")
    assert run(capsys, "stats", "--home", str(home))[0] == 0


# ---- --db and the store file --------------------------------------------------------------------------


def test_a_mistyped_or_empty_db_flag_is_refused_and_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n"
    assert run(capsys, "init", "--name", "n", "--home", str(home))[0] == 0
    typo = tmp_path / "typo.db"
    code, err = run(capsys, "stats", "--home", str(home), "--db", f"sqlite:///{typo}")
    assert code == 2 and f"no SQLite database at {typo}" in err and "rewardnode init" in err
    assert not typo.exists()
    code, err = run(capsys, "stats", "--home", str(home), "--db", "sqlite:///tpyo.db")  # relative: in home
    assert code == 2 and f"no SQLite database at {home / 'tpyo.db'}" in err
    assert not (home / "tpyo.db").exists()
    code, err = run(capsys, "stats", "--home", str(home), "--db", "")
    assert code == 2 and "--db is empty" in err and "leave --db out" in err
    assert run(capsys, "stats", "--home", str(home), "--db", f"sqlite:///{home / 'store.db'}")[0] == 0
    other = tmp_path / "m"
    code, err = run(capsys, "init", "--name", "m", "--home", str(other), "--db", " ")
    assert code == 2 and "--db is empty" in err and not other.exists()


def test_a_store_that_disappeared_is_not_silently_made_again(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "n"
    assert run(capsys, "init", "--name", "n", "--home", str(home))[0] == 0
    store = home / "store.db"
    store.unlink()
    code, err = run(capsys, "stats", "--home", str(home))
    assert code == 1 and f"the store {store}" in err and "restore it from your backup" in err
    assert not store.exists()
    store.touch()  # on purpose: a new, empty store
    assert run(capsys, "stats", "--home", str(home))[0] == 0
