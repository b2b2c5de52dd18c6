"""`rewardnode verify` covers every file of a federated model's artifact, not only its weights: a changed
config.json or tokenizer.json flips the model's preferences while its weights stay the same."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from node.app import Node
from node.federated import FILES_KEY, run_local, verify_model
from tests.federation.conftest import cli

pytestmark = pytest.mark.e2e  # a real (tiny) federation round, like the rest of the tampering suite


def _verify(home: Path, model_id: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = cli("--home", str(home), "verify", model_id, "--no-merge-check")
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_verify_names_every_changed_missing_or_added_file(make_federation, capsys, tmp_path: Path) -> None:
    coord, homes = make_federation(2, pairs=6, extra=("--rounds", "1"))
    model_id = next(iter(run_local(coord, homes, "fed").registered.values()))
    home = homes[0]
    with Node.open(home) as node:
        entry = node.store.get_model(model_id)
        folder = Path(entry.path)
        files = entry.provenance[FILES_KEY]
        assert verify_model(node, model_id, check_merge=False)["files"] == sorted(files)
    covered = {"model.safetensors", "config.json", "tokenizer.json", "model_card.json", "shared.arrays"}
    assert covered <= set(files)
    assert "README.md" not in files  # rendered from model_card.json, which is covered
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    assert _verify(home, model_id, capsys)[0] == 0

    def tampered(change: str) -> str:
        code, out = _verify(home, model_id, capsys)
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        assert code == 1 and f"model {model_id} does not verify" in out, change
        return out

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    assert "changed config.json" in tampered("hidden_act")

    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    out = tampered("two token ids swapped")
    assert "changed tokenizer.json" in out and "restore it from a trusted copy" in out

    (folder / "model_card.json").write_text((folder / "model_card.json").read_text().replace("32", "64"))
    (folder / "tokenizer_config.json").unlink()
    (folder / "extra.py").write_text("print('hi')\n")
    out = tampered("card, missing and added files")
    assert "changed model_card.json, missing tokenizer_config.json, added extra.py" in out

    # Left out by design: README.md (derived from the card) and hidden files.
    (folder / "README.md").write_text("edited by hand\n")
    (folder / ".DS_Store").write_bytes(b"\0")
    assert _verify(home, model_id, capsys)[0] == 0


def test_a_model_registered_before_file_hashes_has_its_weights_checked_only(make_federation) -> None:
    coord, homes = make_federation(2, pairs=6, extra=("--rounds", "1"))
    model_id = next(iter(run_local(coord, homes, "fed").registered.values()))
    with sqlite3.connect(homes[0] / "store.db") as db:  # the registry entry an older rewardnode wrote
        db.execute("UPDATE models SET provenance = json_remove(provenance, ?) WHERE id = ?",
                   (f"$.{FILES_KEY}", model_id))
    with Node.open(homes[0]) as node:
        entry = node.store.get_model(model_id)
    assert FILES_KEY not in entry.provenance
    folder = Path(entry.path)
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"gelu"', '"relu"'))

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli", "--home", str(homes[0]), "verify", model_id,
                               "--no-merge-check"], capture_output=True, text=True, timeout=300)

    done = verify()
    assert done.returncode == 0 and "verifies" in done.stdout
    assert done.stderr.strip() == (f"note: model {model_id} was registered without per-file hashes: only its "
                                   "weights file was checked, not its tokenizer, config or card")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    done = verify()
    assert done.returncode == 1
    assert "model.safetensors is missing or does not hash to the registered" in done.stderr
