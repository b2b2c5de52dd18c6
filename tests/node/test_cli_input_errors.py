"""Bad user input to the CLI: one clear line (cause and fix), the right exit code, nothing stored or loaded.

Every command runs in-process through node.cli.main; the checks under test run before any model loads,
so most tests need none (the eval test scores with a 2-layer BERT built in a second).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main
from node.errors import UsageError


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "node"
    assert main(["--home", str(home), "init", "--name", "org-qa"]) == 0
    return home


def fails(capsys: pytest.CaptureFixture[str], home: Path, *args: str, code: int = 2) -> str:
    """Run `rewardnode --home HOME ARGS...`; assert it exits `code` with exactly one error line; return it."""
    capsys.readouterr()
    rc = main(["--home", str(home), *args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == code, (rc, captured.out, captured.err)
    assert len(lines) == 1 and lines[0].startswith("rewardnode: error: "), captured.err
    return lines[0]


def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any policy or reward-model load fails the test: the checks must come first."""
    import node.commands.rl as rl

    def boom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(rl, "_load", boom)
    monkeypatch.setattr(rl, "_reward", boom)


# ---- rl, best-of-n, generate, sft ------------------------------------------------------------------


def test_rl_rejects_an_unknown_device_before_loading(home: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_model_loading(monkeypatch)
    line = fails(capsys, home, "rl", "--device", "tpu", "--steps", "1")
    assert "--device tpu" in line and "cpu, cuda or mps" in line
    line = fails(capsys, home, "rl", "--device", "cuda:x")
    assert "--device cuda:x" in line and "cuda:N" in line


def test_rl_rejects_cuda_without_a_cuda_device(home: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    forbid_model_loading(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = fails(capsys, home, "rl", "--device", "cuda", "--steps", "1")
    assert "--device cuda" in line and "no CUDA device" in line and "--device cpu" in line


def test_rl_device_from_node_toml_is_named_as_such(home: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_model_loading(monkeypatch)
    with open(home / "node.toml", "a", encoding="utf-8") as f:
        f.write('\n[rl]\ndevice = "tpu"\n')
    line = fails(capsys, home, "rl")
    assert "node.toml [rl] device = 'tpu'" in line


@pytest.mark.parametrize(("flags", "needle"), [
    (("--n", "0"), "--n 0"),
    (("--n", "-2"), "--n -2"),
    (("--limit", "0"), "--limit 0"),
    (("--max-new-tokens", "0"), "--max-new-tokens 0"),
    (("--temperature", "0"), "--temperature 0"),
    (("--top-p", "1.5"), "--top-p 1.5"),
    (("--top-k", "-1"), "--top-k -1"),
])
@pytest.mark.parametrize("command", ["best-of-n", "generate"])
def test_sampling_counts_are_checked_before_loading(home: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch, command: str,
                                                    flags: tuple[str, str], needle: str) -> None:
    forbid_model_loading(monkeypatch)
    line = fails(capsys, home, command, "--policy", "default", *flags)
    assert needle in line


def test_rl_limit_and_sft_counts_are_checked(home: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_model_loading(monkeypatch)
    assert "--limit -1" in fails(capsys, home, "rl", "--limit", "-1")
    assert "--epochs 0" in fails(capsys, home, "sft", "--epochs", "0")
    assert "--batch-size 0" in fails(capsys, home, "sft", "--batch-size", "0")
    assert "--lr 0.0" in fails(capsys, home, "sft", "--lr", "0")
    assert "--overlap 0" in fails(capsys, home, "generate", "--overlap", "0")
    assert "path step" in fails(capsys, home, "generate", "--campaign", "..")


@pytest.mark.parametrize(("flags", "needle"), [
    (("--threads", "-1"), "--threads -1: must be >= 0 (0: torch's default)"),
    (("--lora-r", "0"), "--lora-r 0: must be >= 1; the default is 16"),
    (("--lr", "-1"), "--lr -1: must be > 0; the default is 0.0001"),
    (("--lr", "nan"), "--lr nan: must be a finite number"),
    (("--top-p", "5"), "--top-p 5: must lie in (0, 1]"),
    (("--top-k", "-3"), "--top-k -3: must be >= 0 (0: off)"),
    (("--kl-coef", "-1"), "--kl-coef -1: must be >= 0"),
    (("--kl-budget", "-5"), "--kl-budget -5: must be >= 0 (0: no budget)"),
    (("--target-kl", "-1"), "--target-kl -1: must be > 0"),
    (("--length-free-tokens", "-4"), "--length-free-tokens -4: must be >= 0"),
    (("--seed", "-1"), "--seed -1: must lie in [0, 2**63 - 1]"),
    (("--max-new-tokens", "0"), "--max-new-tokens 0: must be >= 1"),
])
def test_rl_flags_are_range_checked_before_loading(home: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, flags: tuple[str, str],
                                                   needle: str) -> None:
    import torch

    forbid_model_loading(monkeypatch)
    threads = torch.get_num_threads()
    assert needle in fails(capsys, home, "rl", *flags)
    assert torch.get_num_threads() == threads and not (home / "rl").exists()


@pytest.mark.parametrize(("toml", "needle"), [
    ('steps = "many"', "node.toml [rl] steps = 'many': must be a whole number; the default is 100"),
    ("learning_rate = -1e-4", "node.toml [rl] learning_rate = -0.0001: must be > 0"),
    ("chat_template = 1", "node.toml [rl] chat_template = 1: must be true or false"),
    ("gamma = 2.0", "node.toml [rl] gamma = 2: must lie in [0, 1]"),
])
def test_rl_settings_in_node_toml_are_checked_by_key(home: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, toml: str,
                                                     needle: str) -> None:
    forbid_model_loading(monkeypatch)
    with open(home / "node.toml", "a", encoding="utf-8") as f:
        f.write(f"\n[rl]\n{toml}\n")
    assert needle in fails(capsys, home, "rl")
    if toml.startswith("steps"):  # a flag overrides the bad value: it is not checked on its own first
        assert "no prompts found" in fails(capsys, home, "rl", "--steps", "2")


@pytest.mark.parametrize(("command", "flags", "needle"), [
    ("best-of-n", ("--seed", "-1"), "--seed -1: give a whole number from 0 to 2**63 - 1"),
    ("generate", ("--seed", "-1"), "--seed -1"),
    ("generate", ("--temperature", "inf"), "--temperature inf: give a temperature above 0"),
    ("sft", ("--seed", "-1"), "--seed -1"),
    ("sft", ("--lr", "inf"), "--lr inf: give a learning rate above 0"),
])
def test_the_other_commands_share_rls_ranges(home: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch, command: str,
                                             flags: tuple[str, str], needle: str) -> None:
    forbid_model_loading(monkeypatch)
    assert needle in fails(capsys, home, command, *flags)


def test_rl_names_an_empty_prompts_file(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_model_loading(monkeypatch)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    line = fails(capsys, home, "rl", "--prompts", str(empty))
    assert f"--prompts {empty} holds no prompts" in line and "or pass --prompts" not in line


@pytest.mark.parametrize(("line", "needle"), [
    ('{"prompt": ""}', ":2: 'prompt' is empty; give the prompt's text or remove the line"),
    ('{"prompt": " \\n\\t"}', ":2: 'prompt' is only whitespace"),
    ('{"prompt": null}', ":2: 'prompt' must be a string, not null; write the prompt's text in quotes"),
    ('{"prompt": ["a", "b"]}', ":2: 'prompt' must be a string, not a list"),
    ('{"prompt": 7}', ":2: 'prompt' must be a string, not a number"),
    ('{"text": "good cat"}', ":2: no 'prompt' key (keys: 'text'); give each line a \"prompt\""),
    ('["good cat"]', ":2: a list, not a JSON object; write one object per line"),
    ('"good cat"', ":2: a string, not a JSON object"),
    ("{bad", ":2: invalid JSON (Expecting property name"),
    ('{"prompt": "a\\u0000b"}', ":2: the prompt holds a NUL character; remove it"),
])
@pytest.mark.parametrize("command", ["rl", "best-of-n", "generate"])
def test_a_bad_prompt_line_is_named_before_loading(home: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, command: str, line: str,
                                                   needle: str) -> None:
    """A blank prompt crashed best-of-n (IndexError) and rl (reshape error, after making the run folder); a
    non-string one was sampled as its repr ("None", "['a', 'b']")."""
    forbid_model_loading(monkeypatch)
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "good cat"}\n' + line + '\n\n{"prompt": "bad dog"}\n', encoding="utf-8")
    out = tmp_path / "run"
    assert f"rewardnode: error: {path}{needle}" in fails(capsys, home, command, "--prompts", str(path),
                                                         *(["--out", str(out)] if command == "rl" else []))
    assert not out.exists() and not (home / "rl").exists()


def test_blank_lines_of_a_prompt_file_are_skipped(home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Blank lines are no prompts, in .txt and .jsonl alike: the file's prompts reach the reward model."""
    import node.commands.rl as rl

    class Stop(Exception):
        pass

    def reward(*_args: object, **_kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(rl, "_reward", reward)
    seen: list[list[str]] = []
    real = rl._read_prompts
    monkeypatch.setattr(rl, "_read_prompts", lambda args, node: seen.append(real(args, node)) or seen[-1])
    txt, jsonl = tmp_path / "p.txt", tmp_path / "p.jsonl"
    txt.write_text("good cat\n\n   \nbad dog\r\n", encoding="utf-8")
    jsonl.write_text('{"prompt": "good cat"}\n\n  \n{"prompt": " bad dog "}\n', encoding="utf-8")
    for path in (txt, jsonl):
        with pytest.raises(Stop):
            main(["--home", str(home), "best-of-n", "--prompts", str(path)])
    assert seen == [["good cat", "bad dog"], ["good cat", " bad dog "]]


def _prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("good cat\nbad dog\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["best-of-n", "generate"])
def test_out_in_a_missing_folder_is_refused_before_loading(home: Path, tmp_path: Path, command: str,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import node.commands.rl as rl

    forbid_model_loading(monkeypatch)
    out = tmp_path / "no-such-folder" / "x.jsonl"
    line = fails(capsys, home, command, "--prompts", str(_prompts_file(tmp_path)), "--out", str(out))
    assert f"--out {out}: the folder {out.parent} does not exist" in line
    assert f"--out {tmp_path} is a folder" in fails(capsys, home, command, "--out", str(tmp_path))
    monkeypatch.setattr(rl, "_writable", lambda _folder: False)
    assert "is not writable" in fails(capsys, home, command, "--out", str(tmp_path / "x.jsonl"))


@pytest.mark.parametrize("command", ["rl", "sft"])
def test_run_folder_under_a_file_or_unwritable_is_refused_before_loading(
        home: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import node.commands.rl as rl
    from node.app import Node
    from storage.records import Demonstration

    forbid_model_loading(monkeypatch)
    with Node.open(home) as node:
        node.store.import_records([Demonstration(source="d", prompt="good cat", response="good")])
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["--prompts", str(_prompts_file(tmp_path))] if command == "rl" else []
    line = fails(capsys, home, command, *base, "--out", str(afile / "run"))
    assert f"{afile} is a file, not a folder" in line
    monkeypatch.setattr(rl, "_writable", lambda _folder: False)
    assert "is not writable" in fails(capsys, home, command, *base, "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["rl", "sft"])
def test_a_failed_run_leaves_no_empty_run_folder(home: Path, tmp_path: Path, command: str,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import node.commands.rl as rl
    from node.app import Node
    from storage.records import Demonstration

    def bad_policy(policy: str, **_kwargs: object) -> None:
        raise UsageError(f"cannot load --policy {policy}: not a model folder")

    monkeypatch.setattr(rl, "_load", bad_policy)
    monkeypatch.setattr(rl, "_reward", lambda *_args, **_kwargs: object())
    with Node.open(home) as node:
        node.store.import_records([Demonstration(source="d", prompt="good cat", response="good")])
    base = ["--prompts", str(_prompts_file(tmp_path))] if command == "rl" else []
    assert "cannot load --policy nope" in fails(capsys, home, command, *base, "--policy", "nope")
    assert not (home / command).exists()  # the default HOME/rl/<time> or HOME/sft/<time>
    out = tmp_path / "run"
    fails(capsys, home, command, *base, "--policy", "nope", "--out", str(out))
    assert not out.exists()


def test_generate_that_cannot_write_out_stores_nothing(home: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The --out folder vanishes while sampling: one line, and no samples or campaign half-stored."""
    import shutil

    import node.commands.rl as rl
    from node.app import Node

    folder = tmp_path / "outs"
    folder.mkdir()

    def sample(_policy: object, _tokenizer: object, prompts: list[str], args: object) -> list[list[str]]:
        shutil.rmtree(folder)
        return [[f"good {i}", f"bad {i}"] for i in range(len(prompts))]

    monkeypatch.setattr(rl, "_load", lambda *_args, **_kwargs: (None, None))
    monkeypatch.setattr(rl, "_sample", sample)
    line = fails(capsys, home, "generate", "--prompts", str(_prompts_file(tmp_path)), "--n", "2",
                 "--campaign", "c1", "--out", str(folder / "gen.jsonl"), code=1)
    assert f"cannot write --out {folder / 'gen.jsonl'}" in line and "nothing was stored" in line
    with Node.open(home) as node:
        assert node.store.list_campaigns() == [] and list(node.store.iter_records()) == []


# ---- score, eval, train, serve ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.node.rl.conftest import save_tiny_rm

    return save_tiny_rm(tmp_path_factory.mktemp("rms") / "rm")


@pytest.mark.parametrize(("response", "needle"), [("", "--response is empty"), (" \n\t", "--response is only whitespace")])
def test_score_rejects_an_empty_response(home: Path, capsys: pytest.CaptureFixture[str], response: str,
                                         needle: str) -> None:
    line = fails(capsys, home, "score", "--model", "no-such-model", "--prompt", "hi", "--response", response)
    assert needle in line and "give the response text" in line


def test_score_accepts_an_empty_prompt_like_v1_score(home: Path, rm_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(home), "score", "--model", str(rm_dir), "--prompt", "", "--response", "good"]) == 0
    float(capsys.readouterr().out)


def _pairs_file(path: Path, bad_line: str | None = None) -> Path:
    lines = [json.dumps({"prompt": f"q{i} cat", "chosen": "good dog", "rejected": "bad rain"}) for i in range(4)]
    if bad_line is not None:
        lines.insert(2, bad_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_eval_skip_invalid_skips_and_counts(home: Path, rm_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = _pairs_file(tmp_path / "bad.jsonl", "{bad")
    line = fails(capsys, home, "eval", "--model", str(rm_dir), "--data", str(data), code=1)
    assert "bad.jsonl:3" in line and "--skip-invalid" in line
    assert main(["--home", str(home), "eval", "--model", str(rm_dir), "--data", str(data), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 invalid record(s)" in out and "line 3: malformed JSON" in out and "4 pairs" in out
    assert main(["--home", str(home), "eval", "--model", str(rm_dir), "--data", str(data), "--skip-invalid",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_skipped_invalid"] == 1 and report["n_total"] == 4

    array = tmp_path / "bad.json"  # a JSON file counts records, as its errors do: "record 3", not a line
    array.write_text(json.dumps([json.loads(x) if x != "{bad" else {"prompt": "q"}
                                 for x in data.read_text().splitlines()], indent=2), encoding="utf-8")
    assert main(["--home", str(home), "eval", "--model", str(rm_dir), "--data", str(array),
                 "--skip-invalid"]) == 0
    assert "(first: record 3: " in capsys.readouterr().out


def test_eval_rejects_a_bad_source_name(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _pairs_file(tmp_path / "ok.jsonl")
    line = fails(capsys, home, "eval", "--data", str(data), "--source", "a\nb")
    assert "invalid --source" in line


def test_export_skip_invalid_needs_data(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, home, "export", "--format", "onnx", "--out", str(tmp_path / "x"), "--skip-invalid")
    assert "--skip-invalid applies to --data" in line


def test_train_unknown_snapshot_lists_the_stored_ones(home: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from node.app import Node

    assert "no snapshots yet" in fails(capsys, home, "train", "--snapshot", "deadbeef", code=1)
    assert main(["--home", str(home), "import", str(_pairs_file(tmp_path / "ok.jsonl"))]) == 0
    with Node.open(home) as node:
        snapshot = node.store.create_snapshot()
    line = fails(capsys, home, "train", "--snapshot", "deadbeef", code=1)
    assert "no snapshot id starts with 'deadbeef'" in line and snapshot.id[:12] in line
    assert "leave out --snapshot" in line


def test_serve_names_the_host_not_the_port(home: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_such_name(*_args: object, **_kwargs: object) -> None:  # no DNS query in tests
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    line = fails(capsys, home, "serve", "--host", "192.0.2.1", "--no-p2p")  # TEST-NET-1: never this machine's
    assert "--host 192.0.2.1 is not an address of this machine" in line and "port" not in line
    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    line = fails(capsys, home, "serve", "--host", "999.1.1.1", "--no-p2p")
    assert "--host 999.1.1.1 is not a valid IP address" in line and "port" not in line


# ---- campaign invite, token create, peers add ---------------------------------------------------------


@pytest.fixture
def campaign_home(home: Path, tmp_path: Path) -> Path:
    assert main(["--home", str(home), "import", str(_pairs_file(tmp_path / "ok.jsonl")), "--source", "qa"]) == 0
    assert main(["--home", str(home), "campaign", "create", "c1", "--source", "qa"]) == 0
    return home


def _token_count(home: Path) -> int:
    from node.app import Node

    with Node.open(home) as node:
        return len(node.store.list_tokens())


@pytest.mark.parametrize(("flags", "needle"), [
    (("--days", "-1"), "--days -1: an invite must stay valid for more than 0 days"),
    (("--days", "0"), "--days 0: an invite must stay valid for more than 0 days"),
    (("--days", "nan"), "--days nan"),
    (("--days", "1e12"), "--days 1e+12 is too far in the future"),
    (("--url", "notaurl"), "--url 'notaurl' is not an http(s) URL with a host"),
    (("--url", "ftp://host"), "is not an http(s) URL with a host"),
    (("--url", "http://"), "is not an http(s) URL with a host"),
    (("--url", "http://host:99999"), "is not a valid URL"),
    (("--url", "http://host/?a=1"), "?query or #fragment"),
    (("--labeler", ""), "--labeler is not a valid annotator name"),
    (("--labeler", "  "), "--labeler is not a valid annotator name"),
])
def test_campaign_invite_rejects_bad_flags_and_stores_no_invite(campaign_home: Path, flags: tuple[str, str],
                                                                needle: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, campaign_home, "campaign", "invite", "c1", "--labeler", "bob", *flags)
    assert needle in line
    assert _token_count(campaign_home) == 0


def test_campaign_invite_with_good_flags_still_works(campaign_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--home", str(campaign_home), "campaign", "invite", "c1", "--labeler", "bob", "--days", "0.5",
                 "--url", "https://labels.example.org/"]) == 0
    assert "https://labels.example.org/login#invite=" in capsys.readouterr().out
    assert _token_count(campaign_home) == 1


def test_token_create_rejects_an_empty_name(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--name is not a valid name" in fails(capsys, home, "token", "create", "--role",
                                                                "scorer", "--name", " ")


PEER = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGzh6h1yYvU8JpTtyXPtjS8QyT7x3w4Lw3jbEqNkP8Mfd"


@pytest.mark.parametrize(("addr", "needle"), [
    ("/ip4/999.0.0.1/tcp/1/p2p/" + PEER.rsplit("/", 1)[1], "'999.0.0.1' is not IPv4"),
    ("/ip4/127.0.0.1/tcp/4001/p2p/" + "x" * 45, "is not a base58 multihash"),
    ("/ip4/127.0.0.1/tcp/4001", "it must end in /p2p/PEER_ID"),
])
def test_peers_add_refuses_an_address_that_can_never_be_dialled(home: Path, addr: str, needle: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, home, "peers", "add", addr)
    assert f"{addr!r} is not a peer address" in line and needle in line
    assert "/ip4/HOST/tcp/PORT/p2p/PEER_ID" in line
    assert not (home / "peers.json").exists()


def test_identity_refuses_garbage_p2p_addresses(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open(home / "node.toml", "a", encoding="utf-8") as f:
        f.write('\n[p2p]\nlisten = ["garbage"]\n')
    line = fails(capsys, home, "identity", code=1)
    assert "listen address 'garbage' is invalid" in line and "/ip4/0.0.0.0/tcp/4001" in line


def test_peers_add_on_a_read_only_home_changes_nothing(home: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from node.p2p import PeerBook

    def read_only(self: PeerBook, peers: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(PeerBook, "_replace_file", read_only)
    line = fails(capsys, home, "peers", "add", PEER, code=1)
    assert "peers.json (Read-only file system)" in line and "is not writable" in line
    assert "nothing was changed" in line
    assert not (home / "peers.json").exists()
