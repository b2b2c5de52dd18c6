"""Bad user input to the CLI: one clear line (cause and fix), the right exit code, nothing stored or loaded.

Every command runs in-process through node.cli.main; the checks under test run before any model loads,
so most tests need none (the eval test scores with a 2-layer BERT built in a second).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main


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
