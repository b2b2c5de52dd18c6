"""The on-device scorer: training's token ids, and no torch, transformers or rewardnode imports."""

# ruff: noqa: F811 -- pytest fixtures imported from conftest_export are redefined as arguments

from __future__ import annotations

import ast
import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from node.rm import standalone
from node.rm.data import PairEncoder, truncate_pair
from node.rm.standalone import OnnxRewardScorer

from .conftest import WORDS
from .conftest_export import (  # noqa: F401 -- fixtures
    LONG_PROMPT,
    Exported,
    bert_onnx,
    bert_rm,
    exported,
    llama_onnx,
    llama_rm,
)

STANDALONE = Path(standalone.__file__)
ALLOWED_IMPORTS = {"onnxruntime", "tokenizers", "numpy"}


def varied_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short, empty, unicode, odd-whitespace and long sides; long prompts get their middle cut."""
    rng = random.Random(seed)
    fixed = [
        ("", ""), ("", "only a response"), ("only a prompt", ""), (LONG_PROMPT, "short answer"),
        ("short question", LONG_PROMPT), (LONG_PROMPT, LONG_PROMPT), ("Ça va? naïve café 🙂", "Très bien — merci!"),
        ("  leading and   inner   spaces ", "\ttabs\nand newlines\n"), ("w1 ... w2 ... w3", "the ... marker itself"),
        ("UPPER lower MiXeD", "w39w38w37"),
    ]
    prompts, responses = [p for p, _ in fixed], [r for _, r in fixed]
    for _ in range(n):
        prompts.append(" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 5, 20, 40, 90]))))
        responses.append(" ".join(rng.choice(WORDS) for _ in range(rng.choice([0, 3, 15, 45]))))
    return prompts, responses


def test_token_ids_equal_pair_encoder(exported: Exported) -> None:
    scorer = OnnxRewardScorer(exported.folder, variant="fp32")
    tokenizer = AutoTokenizer.from_pretrained(exported.rm.model_dir, local_files_only=True)
    encoder = PairEncoder(tokenizer, max_length=48, min_prompt_tokens=8, head_fraction=0.25)
    prompts, responses = varied_texts(80)
    ids, types = scorer.encode(prompts, responses)
    expected_ids, expected_types, truncated = encoder.encode(prompts, responses)
    assert ids == expected_ids
    assert types == expected_types
    assert (types is not None) == encoder.template.with_token_types
    # the comparison covered middle-cut prompts: the marker sits inside at least one full-length sequence
    marker = scorer.spec.marker_ids
    cut = [s for s, t in zip(ids, truncated, strict=True) if t and any(
        s[i: i + len(marker)] == marker for i in range(len(s)))]
    assert len(cut) >= 3 and all(len(s) == 48 for s in cut)


def test_truncate_pair_copy_matches_training() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        prompt = list(range(rng.randint(0, 60)))
        response = list(range(100, 100 + rng.randint(0, 60)))
        kwargs = {"budget": rng.randint(2, 50), "min_prompt_tokens": rng.randint(0, 20),
                  "marker_ids": [-1] * rng.randint(0, 4), "head_fraction": rng.choice([0.0, 0.25, 0.5, 1.0])}
        assert standalone.truncate_pair(prompt, response, **kwargs) == truncate_pair(prompt, response, **kwargs)


def test_imports_only_onnxruntime_tokenizers_numpy_and_stdlib() -> None:
    tree = ast.parse(STANDALONE.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file must work alone"
            roots.add((node.module or "").split(".")[0])
    third_party = {r for r in roots if r not in sys.stdlib_module_names and r != "__future__"}
    assert third_party == ALLOWED_IMPORTS


GUARD = """
import json, runpy, sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
sys.modules["transformers"] = None
sys.modules["node"] = None           # nor any rewardnode module
mod = runpy.run_path(sys.argv[1])
scorer = mod["OnnxRewardScorer"](sys.argv[2], threads=1)
prompts, responses = json.loads(sys.argv[3])
print(json.dumps({"variant": scorer.variant, "scores": scorer.score(prompts, responses, batch_size=4),
                  "loaded": sorted(m for m in ("torch", "transformers") if sys.modules.get(m) is not None)}))
"""


def test_scores_without_torch_or_transformers(bert_onnx: Exported, tmp_path: Path) -> None:
    device = tmp_path / "device"  # what gets copied onto a device: the export folder, nothing else
    shutil.copytree(bert_onnx.folder, device)
    prompts, responses = varied_texts(10)
    # int8 activations are quantized per batch tensor, so int8 scores depend on the batching: use the same
    expected = OnnxRewardScorer(bert_onnx.folder).score(prompts, responses, batch_size=4)
    for path in (STANDALONE, device / "standalone.py"):
        proc = subprocess.run([sys.executable, "-c", GUARD, str(path), str(device), json.dumps([prompts, responses])],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["variant"] == "int8" and out["loaded"] == []
        assert out["scores"] == pytest.approx(expected, abs=1e-6)


def test_command_line_scores_jsonl(llama_onnx: Exported, tmp_path: Path) -> None:
    rows = [{"prompt": "q1 what is w3", "response": "w3 is excellent"}, {"prompt": LONG_PROMPT, "response": "no"}]
    proc = subprocess.run(
        [sys.executable, str(llama_onnx.folder / "standalone.py"), str(llama_onnx.folder), "--variant", "fp32"],
        input="\n".join(json.dumps(r) for r in rows) + "\n", capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    scores = [float(line) for line in proc.stdout.split()]
    expected = OnnxRewardScorer(llama_onnx.folder, variant="fp32").score([r["prompt"] for r in rows],
                                                                         [r["response"] for r in rows])
    assert scores == pytest.approx(expected, abs=1e-6)


def test_refuses_tampered_or_missing_files(llama_onnx: Exported, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(llama_onnx.folder, folder)
    with (folder / "model.int8.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        OnnxRewardScorer(folder)
    assert OnnxRewardScorer(folder, variant="fp32").score(["q"], ["r"])  # the fp32 file is intact
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(ValueError, match="does not exist"):
        OnnxRewardScorer(folder, variant="int8")
    with pytest.raises(ValueError, match="no scoring.json"):
        OnnxRewardScorer(tmp_path)
    with pytest.raises(ValueError, match="variant"):
        OnnxRewardScorer(folder, variant="fp16")
    with pytest.raises(ValueError, match="one prompt per response"):
        OnnxRewardScorer(folder, variant="fp32").score(["a", "b"], ["c"])


@pytest.mark.parametrize(("stdin", "error"), [
    ('[1, 2]\n', "stdin line 1: a JSON array, not an object"),
    ('{"prompt": "hi", "response": "ok"}\n{"prompt": "hi", "response": 5}\n',
     'stdin line 2: "response" is a JSON number, not a string'),
    ('\n{"prompt": "hi"}\n', 'stdin line 2: no "response" field'),
    ('{"response": "r"}\n', 'stdin line 1: no "prompt" field'),
    ('{"prompt": null, "response": "r"}\n', 'stdin line 1: "prompt" is a JSON null, not a string'),
    ('{"prompt": "a", "response": "b"}\ngarbage\n', "stdin line 2: not JSON (Expecting value at column 1)"),
    ('"just text"\n', "stdin line 1: a JSON string, not an object"),
])
def test_command_line_names_the_bad_stdin_line(bert_onnx: Exported, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], stdin: str,
                                               error: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert standalone.main([str(bert_onnx.folder)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {error}; give one JSON object") and err.count("\n") == 1, err


def test_command_line_reads_stdin_bytes_line_by_line(bert_onnx: Exported, tmp_path: Path) -> None:
    rows = b'{"prompt": "q1", "response": "w3 is excellent"}\n\n{"prompt": "q1", "response": "\xff"}\n'
    proc = subprocess.run([sys.executable, str(STANDALONE), str(bert_onnx.folder)], input=rows,
                          capture_output=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().startswith("error: stdin line 3: not UTF-8 ("), proc.stderr


def test_command_line_names_a_lone_surrogate(bert_onnx: Exported, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # valid JSON, not text: the tokenizer raised a bare TypeError with no line number
    stdin = '{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": "ok \\ud83d"}\n'
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert standalone.main([str(bert_onnx.folder)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith('error: stdin line 2: "response" holds a lone surrogate (\\ud83d at character '
                          '3)'), err


@pytest.mark.parametrize(("damage", "error"), [
    (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer.json"),
    (lambda f: (f / "tokenizer.json").write_text("{"), "tokenizer.json does not load (EOF while parsing"),
    (lambda f: (f / "scoring.json").write_text("{"), "scoring.json is not a valid scoring.json (Expecting"),
    (lambda f: (f / "scoring.json").write_text("[1]"), "not a valid scoring.json (a JSON array"),
], ids=["no-tokenizer", "bad-tokenizer", "bad-spec", "spec-not-object"])
def test_command_line_names_a_broken_export_file(
        bert_onnx: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], damage, error: str) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(bert_onnx.folder, folder)
    damage(folder)
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"prompt": "a", "response": "b"}\n'))
    assert standalone.main([str(folder)]) == 1  # not a traceback
    out, err = capsys.readouterr()
    assert out == "" and error in err and err.count("\n") == 1, err
    assert err.endswith("copy the whole export folder again, or export the model again\n"), err


@pytest.mark.parametrize("swap", ["another-export", "one-byte"])
def test_refuses_a_tokenizer_of_another_export(bert_onnx: Exported, llama_onnx: Exported, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], swap: str) -> None:
    # another model's tokenizer.json loads fine and gives other ids: the scorer gave wrong scores, silently
    folder = tmp_path / "copy"
    shutil.copytree(bert_onnx.folder, folder)
    tokenizer = folder / "tokenizer.json"
    recorded = json.loads((folder / "scoring.json").read_text())["files"]["tokenizer.json"]
    assert recorded == {"sha256": standalone.file_sha256(tokenizer), "bytes": tokenizer.stat().st_size}
    if swap == "another-export":
        shutil.copyfile(llama_onnx.folder / "tokenizer.json", tokenizer)
    else:  # still valid JSON, still a tokenizer that loads
        tokenizer.write_bytes(tokenizer.read_bytes() + b"\n")
    assert standalone.Tokenizer.from_file(str(tokenizer)) is not None
    for variant in ("int8", "fp32"):  # the model files are intact: only the tokenizer is refused
        with pytest.raises(ValueError, match=r"tokenizer\.json has sha256 .*, scoring\.json says "):
            OnnxRewardScorer(folder, variant=variant)
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"prompt": "a", "response": "b"}\n'))
    assert standalone.main([str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {tokenizer} has sha256 "), err
    assert err.endswith("copy the whole export folder again, or export the model again\n"), err


def test_an_export_without_the_tokenizer_hash_still_scores(bert_onnx: Exported, tmp_path: Path) -> None:
    # exports written before scoring.json recorded tokenizer.json's sha256 keep loading, model files checked
    folder = tmp_path / "old"
    shutil.copytree(bert_onnx.folder, folder)
    spec = json.loads((folder / "scoring.json").read_text())
    del spec["files"]["tokenizer.json"]
    (folder / "scoring.json").write_text(json.dumps(spec))
    prompts, responses = varied_texts(5)
    expected = OnnxRewardScorer(bert_onnx.folder).score(prompts, responses)
    assert OnnxRewardScorer(folder).score(prompts, responses) == pytest.approx(expected, abs=1e-6)
    with (folder / "model.int8.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"model\.int8\.onnx has sha256"):
        OnnxRewardScorer(folder)
