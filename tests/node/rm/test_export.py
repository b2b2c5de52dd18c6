"""ONNX export: fp32 scores like torch, int8 passes the fidelity gate, a broken int8 model is refused."""

# ruff: noqa: F811 -- pytest fixtures imported from conftest_export are redefined as arguments

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from node.errors import NodeError
from node.rm import export
from node.rm.artifact import RewardScorer, file_sha256
from node.rm.export import (
    ExportError,
    ExportFidelityError,
    ExportFidelityWarning,
    export_onnx,
    order_agreement,
)
from node.rm.quantize import quantize_blocks
from node.rm.standalone import OnnxRewardScorer

from .conftest_export import (  # noqa: F401 -- fixtures
    LONG_PROMPT,
    Exported,
    TrainedRM,
    bert_onnx,
    bert_rm,
    exported,
    llama_onnx,
    llama_rm,
)


def texts(rm: TrainedRM) -> tuple[list[str], list[str]]:
    prompts = [q.prompt for q in rm.dev] * 2 + [LONG_PROMPT, "", "short"]
    responses = [q.chosen for q in rm.dev] + [q.rejected for q in rm.dev] + ["ok", "empty prompt", LONG_PROMPT]
    return prompts, responses


def test_fp32_scores_equal_torch(exported: Exported) -> None:
    prompts, responses = texts(exported.rm)
    torch_scores = torch.tensor(RewardScorer(exported.rm.model_dir).score(prompts, responses))
    onnx_scorer = OnnxRewardScorer(exported.folder, variant="fp32")
    for batch_size in (1, 7, 32):  # dynamic batch and sequence axes: every shape scores alike
        onnx_scores = torch.tensor(onnx_scorer.score(prompts, responses, batch_size=batch_size))
        torch.testing.assert_close(onnx_scores, torch_scores, rtol=0, atol=1e-4)
    assert exported.report.max_abs_diff_vs_torch < 1e-4
    assert exported.report.exporter == "torchscript" and exported.report.opset == export.DEFAULT_OPSET

    graph = onnx.load(exported.folder / "model.onnx").graph
    assert [o.name for o in graph.output] == ["reward"]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch"]
    for inp in graph.input:
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], (inp.name, dims)
    typed = json.loads((exported.folder / "scoring.json").read_text())["template"]["token_types"]
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"] + (["token_type_ids"] if typed else [])


def test_int8_passes_the_gate_and_is_smaller(exported: Exported) -> None:
    report, folder = exported.report, exported.folder
    assert report.gate_passed is True and not report.forced
    assert report.agreement is not None and report.agreement >= 0.995
    assert report.n_dev_pairs == len(exported.rm.dev)
    assert report.sizes["model.int8.onnx"] < report.sizes["model.onnx"]
    for name in ("model.onnx", "model.int8.onnx"):
        assert report.sha256[name] == file_sha256(folder / name)
        assert report.sizes[name] == (folder / name).stat().st_size
    assert report.sha256["model.safetensors"] == file_sha256(exported.rm.model_dir / "model.safetensors")

    spec = json.loads((folder / "scoring.json").read_text())
    assert spec["files"]["model.int8.onnx"]["sha256"] == report.sha256["model.int8.onnx"]
    assert spec["checks"]["int8"]["passed"] is True and spec["checks"]["int8"]["agreement"] == report.agreement
    assert (spec["max_length"], spec["min_prompt_tokens"], spec["head_fraction"]) == (48, 8, 0.25)
    assert spec["prompt_cut_marker"] == " ... " and spec["prompt_cut_marker_ids"]
    assert (folder / "tokenizer.json").is_file()
    assert (folder / "standalone.py").read_text() == Path(export.standalone.__file__).read_text()
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no staging folder left

    # the int8 model ranks the dev pairs like fp32 does
    dev = exported.rm.dev
    prompts, responses = [q.prompt for q in dev] * 2, [q.chosen for q in dev] + [q.rejected for q in dev]
    fp32 = np.array(OnnxRewardScorer(folder, variant="fp32").score(prompts, responses))
    int8_scorer = OnnxRewardScorer(folder)
    assert int8_scorer.variant == "int8"
    int8 = np.array(int8_scorer.score(prompts, responses))
    n = len(dev)
    assert order_agreement(fp32[:n], fp32[n:], int8[:n], int8[n:]) == report.agreement
    assert not np.array_equal(fp32, int8)  # it really is another model


def _zero_int8_weights(path: Path) -> None:
    model = onnx.load(path)
    zeroed = 0
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
            zeroed += 1
    assert zeroed > 0
    onnx.save(model, path)


@pytest.fixture
def broken_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantize as usual, then zero every int8 weight: a model that cannot order anything."""
    quantize = export.quantize_int8

    def broken(fp32_path: Path, int8_path: Path, scheme: str) -> None:
        quantize(fp32_path, int8_path, scheme)
        _zero_int8_weights(int8_path)

    monkeypatch.setattr(export, "quantize_int8", broken)


def test_gate_refuses_a_broken_int8_model(bert_rm: TrainedRM, tmp_path: Path, broken_int8: None) -> None:
    out = tmp_path / "exports" / "onnx"
    with pytest.raises(ExportFidelityError, match=r"orders \d+\.\d+% of 60 dev pairs.*--force") as info:
        export_onnx(bert_rm.model_dir, out, int8=True, dev_pairs=bert_rm.dev, measure_latency=False)
    assert info.value.agreement < 0.5 and info.value.n_pairs == 60
    assert isinstance(info.value, NodeError)  # the CLI prints it as one line
    # nothing final, no staging folder, and not the parent folder the export made for it
    assert not out.exists() and not out.parent.exists() and list(tmp_path.iterdir()) == []

    with pytest.warns(ExportFidelityWarning, match="FAILED.*ANYWAY"):
        report = export_onnx(bert_rm.model_dir, out, int8=True, dev_pairs=bert_rm.dev, force=True,
                             measure_latency=False)
    assert report.forced and report.gate_passed is False and report.agreement == info.value.agreement
    assert set(info.value.tried) == {"dynamic", "weights"} and "schemes tried: dynamic" in str(info.value)
    assert report.int8_scheme == max(report.int8_tried, key=report.int8_tried.__getitem__)  # the best one tried
    spec = json.loads((out / "scoring.json").read_text())
    assert spec["checks"]["int8"] | {"agreement": None} == {
        "agreement": None, "forced": True, "passed": False, "min_agreement": 0.995, "n_dev_pairs": 60,
        "max_abs_diff_vs_fp32": report.int8_max_abs_diff, "scheme": report.int8_scheme,
        "tried": report.int8_tried}


def test_auto_falls_back_to_weight_only_int8_when_dynamic_fails(
        bert_rm: TrainedRM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quantize = export.quantize_int8

    def dynamic_broken(fp32_path: Path, int8_path: Path, scheme: str) -> None:
        quantize(fp32_path, int8_path, scheme)
        if scheme == "dynamic":
            _zero_int8_weights(int8_path)

    monkeypatch.setattr(export, "quantize_int8", dynamic_broken)
    report = export_onnx(bert_rm.model_dir, tmp_path / "auto", int8=True, dev_pairs=bert_rm.dev,
                         measure_latency=False)
    assert report.int8_scheme == "weights" and report.gate_passed is True and not report.forced
    assert list(report.int8_tried) == ["dynamic", "weights"] and report.int8_tried["dynamic"] < 0.5
    assert report.agreement == report.int8_tried["weights"] >= 0.995
    spec = json.loads((tmp_path / "auto" / "scoring.json").read_text())
    assert spec["checks"]["int8"]["scheme"] == "weights" and spec["checks"]["int8"]["tried"] == report.int8_tried

    # asked for by name, a failing scheme is not replaced by another
    with pytest.raises(ExportFidelityError) as info:
        export_onnx(bert_rm.model_dir, tmp_path / "dynamic", int8=True, dev_pairs=bert_rm.dev,
                    int8_scheme="dynamic", measure_latency=False)
    assert info.value.tried == {"dynamic": info.value.agreement} and "schemes tried" not in str(info.value)
    with pytest.raises(ValueError, match="int8_scheme.*auto, dynamic, weights"):
        export_onnx(bert_rm.model_dir, tmp_path / "x", int8=True, dev_pairs=bert_rm.dev, int8_scheme="int4")


def test_weight_only_int8_stores_int8_and_scores_near_fp32(bert_rm: TrainedRM, tmp_path: Path) -> None:
    report = export_onnx(bert_rm.model_dir, tmp_path / "onnx", int8=True, dev_pairs=bert_rm.dev,
                         int8_scheme="weights", measure_latency=False)
    assert report.int8_scheme == "weights" and report.int8_tried == {"weights": report.agreement}
    assert report.gate_passed is True
    model = onnx.load(tmp_path / "onnx" / "model.int8.onnx")
    fp32_model = onnx.load(tmp_path / "onnx" / "model.onnx")
    assert {n.op_type for n in model.graph.node} - {n.op_type for n in fp32_model.graph.node} <= {"Cast"}
    int8_elements = sum(int(np.prod(i.dims)) for i in model.graph.initializer
                        if i.data_type == onnx.TensorProto.INT8)
    matrices = sum(int(np.prod(i.dims)) for i in fp32_model.graph.initializer
                   if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and min(i.dims) >= 32)
    # every weight matrix (embeddings included) is stored as int8, but the 2-row token-type table and the
    # one-output head, whose error would reach every token or the reward itself
    assert int8_elements == matrices and matrices > 0
    assert {"model.classifier.weight", "model.bert.embeddings.token_type_embeddings.weight"} <= {
        i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    # 3 of every 4 bytes of each matrix saved, less its fp16 scales (one per 16 elements or per embedding row)
    assert report.sizes["model.int8.onnx"] < report.sizes["model.onnx"] - 2.5 * matrices

    prompts, responses = texts(bert_rm)
    fp32 = np.array(OnnxRewardScorer(tmp_path / "onnx", variant="fp32").score(prompts, responses))
    int8 = np.array(OnnxRewardScorer(tmp_path / "onnx").score(prompts, responses))
    assert not np.array_equal(fp32, int8)
    assert np.abs(int8 - fp32).max() < 0.02 * np.abs(fp32).max()  # weights rounded, activations not


def test_quantize_blocks_matches_a_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 24)).astype(np.float32)
    w[5, 3] = 40.0  # an outlier only widens the scale of its own block
    for axis, block in ((0, 32), (1, 8), (1, 0), (0, 7)):  # 7 divides neither axis: one scale per column
        q, scale = quantize_blocks(w, axis, block)
        b = block if block and w.shape[axis] % block == 0 else w.shape[axis]
        ref = np.empty_like(w)
        for start in range(0, w.shape[axis], b):
            part = w[start:start + b] if axis == 0 else w[:, start:start + b]
            s = (np.abs(part).max(axis=axis, keepdims=True) / 127).astype(np.float16).astype(np.float32)
            deq = np.round(part / s) * s
            if axis == 0:
                ref[start:start + b] = deq
            else:
                ref[:, start:start + b] = deq
        assert q.dtype == np.int8 and np.abs(q).max() == 127 and scale.dtype == np.float16
        np.testing.assert_allclose((q * scale.astype(np.float32)).reshape(w.shape), ref, rtol=1e-6, atol=1e-7)
    q, scale = quantize_blocks(w, 0, 32)
    assert scale.shape == (2, 1, 24) and scale[0, 0, 3] == pytest.approx(40 / 127, rel=1e-3)
    assert scale[1, 0, 3] < 0.1  # the other half of that column keeps a fine scale
    q, scale = quantize_blocks(np.full((2, 2), 1e-6, dtype=np.float32), 0, 0)  # 1e-6 / 127 underflows fp16
    assert (scale > 0).all() and np.isfinite(scale).all() and np.abs(q * scale.astype(np.float32) - 1e-6).max() < 1e-4


def test_int8_without_dev_pairs_needs_force(bert_rm: TrainedRM, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="needs dev pairs.*--data"):
        export_onnx(bert_rm.model_dir, tmp_path / "a", int8=True, dev_pairs=None)
    assert list(tmp_path.iterdir()) == []

    fp32_only = export_onnx(bert_rm.model_dir, tmp_path / "fp32", int8=False, dev_pairs=None, measure_latency=False)
    assert fp32_only.int8_path is None and fp32_only.agreement is None and fp32_only.gate_passed is None
    assert not (tmp_path / "fp32" / "model.int8.onnx").exists()
    assert OnnxRewardScorer(tmp_path / "fp32").variant == "fp32"

    with pytest.warns(ExportFidelityWarning, match="WITHOUT its fidelity gate"):
        forced = export_onnx(bert_rm.model_dir, tmp_path / "b", int8=True, dev_pairs=[], force=True,
                             measure_latency=False)
    assert forced.forced and forced.gate_passed is None and forced.agreement is None
    assert json.loads((tmp_path / "b" / "scoring.json").read_text())["checks"]["int8"]["passed"] is None


def test_export_refuses_a_used_folder_and_bad_arguments(bert_rm: TrainedRM, tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_onnx(bert_rm.model_dir, tmp_path / "used", int8=False, dev_pairs=None)
    with pytest.raises(ValueError, match="min_agreement"):
        export_onnx(bert_rm.model_dir, tmp_path / "new", int8=True, dev_pairs=bert_rm.dev, min_agreement=1.5)


def test_dynamo_exporter_is_the_fallback(bert_rm: TrainedRM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_fp32 = export.export_fp32

    def torchscript_broken(*args, dynamo: bool, **kwargs) -> None:
        if not dynamo:
            raise RuntimeError("simulated TorchScript exporter failure")
        export_fp32(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(export, "export_fp32", torchscript_broken)
    report = export_onnx(bert_rm.model_dir, tmp_path / "onnx", int8=False, dev_pairs=bert_rm.dev,
                         measure_latency=False)
    assert report.exporter == "dynamo" and report.opset >= export.DYNAMO_MIN_OPSET
    assert report.max_abs_diff_vs_torch < 1e-4


def test_no_exporter_matching_torch_is_an_error(bert_rm: TrainedRM, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "FP32_TOLERANCE", -1.0)  # nothing can match: both exporters are rejected
    with pytest.raises(ExportError, match="torchscript: max .*dynamo: max"):
        export_onnx(bert_rm.model_dir, tmp_path / "onnx", int8=False, dev_pairs=None, measure_latency=False)
    assert list(tmp_path.iterdir()) == []


def test_report_latency_and_json(llama_rm: TrainedRM, tmp_path: Path) -> None:
    report = export_onnx(llama_rm.model_dir, tmp_path / "onnx", int8=True, dev_pairs=llama_rm.dev)
    assert set(report.latency_ms) == {"torch", "onnx_fp32", "onnx_int8"}
    assert all(set(ms) == {1, 32} and min(ms.values()) > 0 for ms in report.latency_ms.values())
    assert report.latency_tokens == 48  # min(128, max_length)
    back = json.loads(json.dumps(report.to_json()))
    assert back["latency_ms"]["onnx_int8"]["32"] == report.latency_ms["onnx_int8"][32]


def test_order_agreement_counts_reference_ties_as_agreeing() -> None:
    rc_ref, rr_ref = np.array([1.0, 2.0, 5e-7, 3.0]), np.zeros(4)
    assert order_agreement(rc_ref, rr_ref, np.array([0.5, 1.0, -9.0, 0.0]), np.zeros(4)) == 0.75  # int8 tie: flipped
    assert order_agreement(rc_ref, rr_ref, -rc_ref, rr_ref) == 0.25
    with pytest.raises(ValueError, match="at least one pair"):
        order_agreement(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
