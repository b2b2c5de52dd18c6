"""Subprocess smoke run of `rewardnode campaign ...` and `rewardnode token ...`."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from node.labeling.service import sha256_hex
from storage.store import Store


def rn(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_campaign_and_token_commands(tmp_path: Path) -> None:
    home = tmp_path / "node"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                            for i in range(3)))
    (tmp_path / "guide.txt").write_text("Be strict.")
    assert rn(home, "init", "--name", "org").returncode == 0
    assert rn(home, "import", str(data), "--source", "s").returncode == 0
    out = rn(home, "campaign", "create", "c1", "--source", "s", "--overlap", "2", "--guidelines",
             str(tmp_path / "guide.txt"))
    assert out.returncode == 0 and "3 pairs" in out.stdout, out.stderr
    invite = rn(home, "campaign", "invite", "c1", "--labeler", "ann", "--url", "http://127.0.0.1:9999")
    assert invite.returncode == 0
    secret = invite.stdout.split("invite=")[1].strip()
    listed = json.loads(rn(home, "campaign", "list", "--json").stdout)
    assert [(c["name"], c["pairs"], c["overlap"]) for c in listed] == [("c1", 3, 2)]
    token = rn(home, "token", "create", "--role", "labeler", "--name", "bob")
    assert token.returncode == 0
    api_secret = token.stdout.splitlines()[1].strip()
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        assert store.get_campaign("c1").guidelines == "Be strict."
        assert store.find_token(sha256_hex(secret), ("invite",)) is not None  # only the hash is stored
        assert store.find_token(sha256_hex(api_secret), ("api",)) is not None
    tokens = json.loads(rn(home, "token", "list", "--json").stdout)
    assert [(t["kind"], t["name"]) for t in tokens] == [("invite", "ann"), ("api", "bob")]
    assert secret not in json.dumps(tokens)
    assert rn(home, "token", "revoke", str(tokens[1]["id"])).returncode == 0
    again = rn(home, "campaign", "create", "c1", "--source", "s")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert rn(home, "campaign", "create", "c2").returncode == 2
    bad = rn(home, "campaign", "create", "c3\nx", "--source", "s")  # its labels would be source labeling:c3\nx
    assert bad.returncode == 2 and "invalid campaign name" in bad.stderr


def test_campaign_names_must_fit_the_source_and_the_page_address(tmp_path: Path) -> None:
    home = tmp_path / "node"
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad"}) + "\n")
    assert rn(home, "init", "--name", "org").returncode == 0
    assert rn(home, "import", str(data), "--source", "s").returncode == 0
    for name, fragment in (("x" * 192, "192 characters long, more than 191"), (".", "path step"),
                           ("..", "a browser turns the page /label/.. into /"), ("a/b", "holds a '/'")):
        bad = rn(home, "campaign", "create", name, "--source", "s")
        assert bad.returncode == 2, bad.stderr
        assert "invalid campaign name" in bad.stderr and fragment in bad.stderr, bad.stderr
        assert "1-191 characters" in bad.stderr
    longest = "y" * 191  # its labels' source labeling:yyy... is 200 characters, the most a source may have
    assert rn(home, "campaign", "create", longest, "--source", "s").returncode == 0
    listed = json.loads(rn(home, "campaign", "list", "--json").stdout)
    assert [c["name"] for c in listed] == [longest]


def test_token_and_labeler_names_follow_the_annotator_name_rule(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert rn(home, "init", "--name", "org").returncode == 0
    bad = rn(home, "token", "create", "--role", "labeler", "--name", "bob\nalice  0.99")
    assert bad.returncode == 2 and "--name is not a valid name" in bad.stderr, bad.stderr
    bad = rn(home, "campaign", "invite", "c", "--labeler", "  ")
    assert bad.returncode == 2 and "--labeler is not a valid annotator name" in bad.stderr, bad.stderr
    assert json.loads(rn(home, "token", "list", "--json").stdout) == []


def test_token_list_shows_expired_tokens(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert rn(home, "init", "--name", "org").returncode == 0
    past, future = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(days=1)
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.add_token("a" * 64, kind="session", role="labeler", name="old", expires_at=past)
        store.add_token("b" * 64, kind="session", role="labeler", name="new", expires_at=future)
        store.add_token("c" * 64, kind="api", role="admin", name="ops")
    rows = json.loads(rn(home, "token", "list", "--json").stdout)
    assert [(t["name"], t["expired"]) for t in rows] == [("old", True), ("new", False), ("ops", False)]
    assert [t["expires_at"] for t in rows] == [past.isoformat(), future.isoformat(), None]
    text = rn(home, "token", "list").stdout.splitlines()
    assert [line.split()[-1] for line in text] == ["expired", "live", "live"]
