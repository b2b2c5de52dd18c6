"""Export a saved reward model to ONNX, fp32 and int8, so it scores anywhere down to a phone.

    out_dir/
      model.onnx          fp32: input_ids, attention_mask[, token_type_ids] (B, T) int64 -> reward (B,) float32
      model.int8.onnx     int8 weights (node.rm.quantize: "dynamic" int8 compute, or "weights" int8 storage with
                          fp32 compute); same inputs and output
      tokenizer.json, tokenizer_config.json, ...
      scoring.json        training-time truncation, the pair template as token ids, sha256 and size of each
                          model file and of tokenizer.json, the checks below
      standalone.py       the on-device scorer: onnxruntime + tokenizers + numpy, nothing else

Checks run on the folder before it is moved into place (nothing half-checked is ever left at out_dir):

1. Tokenization: the standalone scorer (the `tokenizers` package) encodes the probe and dev texts to the
   same ids as training's PairEncoder (transformers).
2. fp32 vs torch: max |r_onnx - r_torch| <= FP32_TOLERANCE * max(1, max |r_torch|) over the probe and
   dev texts, scored in batches of two sizes. The legacy TorchScript exporter runs first; torch.export
   (dynamo) is the fallback when it fails or disagrees.
3. int8 fidelity gate: agreement = share of dev pairs whose order sign(r_c - r_r) is the same with
   int8 as with fp32 (pairs with |r_c - r_r| < TIE in fp32 agree whatever int8 says). Dynamic
   quantization takes each activation's int8 range from the whole batch tensor, so an int8 score
   depends a little on what it is batched with: dynamic int8 is scored both in batches of 32 and one
   sequence at a time, and the lower agreement counts (weight-only int8 rounds no activation: batches
   of 32 only). int8_scheme "auto" (the default) gates dynamic
   int8 first (fast) and, when it fails, weight-only int8 (as small, fp32 speed, near-fp32 scores);
   scoring.json records which one was written and what each scored. Below min_agreement the export
   raises ExportFidelityError, unless force=True, which writes the best one tried with a warning and
   records the failure in scoring.json. Without dev pairs the gate cannot run, so int8 is refused
   unless force=True (which writes dynamic int8 unchecked under "auto").

BERT classifiers are traced through node.rm.model.cls_rewards (the last layer runs for [CLS] only), so
the ONNX graph skips the work whose output the reward never reads. The graph is traced with eager
attention (plain MatMul/Softmax ops, standard ONNX opset 17) rather than scaled_dot_product_attention;
onnxruntime fuses it at load time. One file per model: models over
2 GB (protobuf's limit) are not supported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from node.errors import NodeError
from node.rm import standalone
from node.rm.artifact import WEIGHTS_FILE, RewardScorer, file_sha256, staged_folder
from node.rm.data import PROMPT_CUT_MARKER, PairEncoder, PreferencePair, pad_batch
from node.rm.model import rewards
from node.rm.preflight import check_out_dir
from node.rm.quantize import SCHEMES, quantize_int8
from node.rm.standalone import (
    EXPORT_FORMAT,
    FP32_FILE,
    INT8_FILE,
    OUTPUT_NAME,
    SCORING_FILE,
    TOKENIZER_FILE,
    OnnxRewardScorer,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""LayerNormalization is an opset-17 op; onnxruntime 1.14+ (mobile builds included) runs it."""
DYNAMO_MIN_OPSET = 18
FP32_TOLERANCE = 1e-3
INT8_SCHEMES = ("auto", *SCHEMES)
TIE = 1e-6
"""|r_c - r_r| below this in fp32 is a tie: any int8 order agrees with it."""
ONNX_MAX_BYTES = 2**31 - 2**24
"""A single ONNX file is one protobuf message (2 GiB at most); keep 16 MiB for the graph."""
LATENCY_BATCHES = (1, 32)
LATENCY_TOKENS = 128
STANDALONE_FILE = "standalone.py"
EXPORTERS = ("torchscript", "dynamo")
# Texts every export is checked on, besides the dev pairs: empty sides, non-ASCII, and prompts and
# responses longer than any max_length (the middle of the prompt is cut, the response capped).
_LONG = " ".join(["please explain every step of the answer in detail"] * 80)
PROBES: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris is the capital of France."),
    ("", "A response to an empty prompt."),
    ("A prompt with an empty response.", ""),
    (_LONG + " Now, what is the first step?", "First, read the question."),
    ("Summarize this.", _LONG),
    (_LONG, _LONG),
    ("Ça va? Qu'est-ce que c'est, naïve café", "Très bien, merci!"),
)


class ExportError(NodeError):
    """The reward model could not be exported faithfully; the message says why and what to do."""


class ExportFidelityError(ExportError):
    """The int8 model orders too few dev pairs like the fp32 model."""

    def __init__(self, agreement: float, min_agreement: float, n_pairs: int,
                 tried: dict[str, float] | None = None) -> None:
        self.agreement = agreement
        self.min_agreement = min_agreement
        self.n_pairs = n_pairs
        self.tried = dict(tried or {})
        flipped = round((1.0 - agreement) * n_pairs)
        schemes = f" (schemes tried: {tried_summary(self.tried)})" if len(self.tried) > 1 else ""
        super().__init__(
            f"int8 fidelity gate failed: the int8 model orders {agreement:.2%} of {n_pairs} dev pairs like the fp32 "
            f"model ({flipped} flipped){schemes}, below the required {min_agreement:.2%}; nothing was written. Ship "
            "the fp32 model (export without int8), or pass --force (force=True) to write the int8 model anyway"
        )


class ExportFidelityWarning(UserWarning):
    """An int8 model was written although its fidelity gate failed or could not run (force=True)."""


@dataclass(frozen=True)
class ExportReport:
    """What export_onnx wrote and measured."""

    out_dir: Path
    fp32_path: Path
    int8_path: Path | None
    sizes: dict[str, int]
    """Bytes per file: the source model.safetensors, model.onnx, model.int8.onnx."""
    sha256: dict[str, str]
    """sha256 per file, same keys as `sizes`."""
    exporter: str
    """"torchscript" (torch.onnx legacy exporter) or "dynamo" (torch.export)."""
    opset: int
    max_abs_diff_vs_torch: float
    """max |r_onnx_fp32 - r_torch| over the checked sequences."""
    n_checked: int
    """Sequences scored by both torch and ONNX fp32 (probe texts + both sides of every dev pair)."""
    n_dev_pairs: int
    agreement: float | None
    """Share of dev pairs ordered alike by int8 and fp32 (dynamic: the lower of batch 32 and batch 1); None without
    int8 or without dev pairs."""
    min_agreement: float
    int8_max_abs_diff: float | None
    """max |r_int8 - r_fp32| over both sides of the dev pairs, batch 32 and batch 1."""
    gate_passed: bool | None
    """None when the gate did not run (no int8, or forced without dev pairs)."""
    forced: bool
    """True when an int8 model was written without passing the gate."""
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)
    """{"torch" | "onnx_fp32" | "onnx_int8": {batch size: median ms per call}} at 1 thread."""
    latency_tokens: int = 0
    """Tokens per sequence in the latency batches."""
    int8_scheme: str | None = None
    """The int8 variant written (node.rm.quantize.SCHEMES), None without int8."""
    int8_tried: dict[str, float] = field(default_factory=dict)
    """Gate agreement of every int8 scheme tried, in the order tried (empty when the gate did not run)."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        return {
            "out_dir": str(self.out_dir), "fp32_path": str(self.fp32_path),
            "int8_path": str(self.int8_path) if self.int8_path else None, "sizes": self.sizes, "sha256": self.sha256,
            "exporter": self.exporter, "opset": self.opset, "max_abs_diff_vs_torch": self.max_abs_diff_vs_torch,
            "n_checked": self.n_checked, "n_dev_pairs": self.n_dev_pairs, "agreement": self.agreement,
            "min_agreement": self.min_agreement, "int8_max_abs_diff": self.int8_max_abs_diff,
            "gate_passed": self.gate_passed, "forced": self.forced,
            "latency_ms": {k: {str(b): v for b, v in d.items()} for k, d in self.latency_ms.items()},
            "latency_tokens": self.latency_tokens, "int8_scheme": self.int8_scheme, "int8_tried": self.int8_tried,
        }


# ----------------------------------------------------------------------------------------------
# Export


def export_onnx(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    int8: bool,
    dev_pairs: Sequence[PreferencePair] | None,
    int8_scheme: str = "auto",
    min_agreement: float = 0.995,
    force: bool = False,
    opset: int = DEFAULT_OPSET,
    measure_latency: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export the reward model saved at model_dir to an ONNX folder at out_dir, checked as the module says.
    progress, when given, receives one line as each stage starts (the checks score every dev pair several
    times, minutes for a MiniLM model on a few hundred pairs)."""
    say = progress or (lambda line: None)
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement = {min_agreement} must lie in [0, 1]; 0.995 allows 1 flip in 200 pairs")
    if int8_scheme not in INT8_SCHEMES:
        raise ValueError(f"int8_scheme = {int8_scheme!r} is unknown; use one of {', '.join(INT8_SCHEMES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder; export to a new folder or delete it")
    check_out_dir(out, "out_dir")  # its parent: a folder that can be written to
    dev = list(dev_pairs or [])
    if int8 and not dev and not force:
        raise ExportError(
            "an int8 export needs dev pairs for its fidelity gate (int8 must order them like fp32) and none were "
            "given; pass dev pairs (train first, or give --data), export fp32 only, or pass --force to skip the gate"
        )

    scorer = RewardScorer(model_dir)  # torch, with the card's truncation settings
    encoder = scorer.encoder
    n_bytes = sum(p.numel() * p.element_size() for p in scorer.model.parameters())
    if n_bytes >= ONNX_MAX_BYTES:
        raise ExportError(f"the model has {n_bytes / 2**30:.1f} GiB of weights, over the 2 GiB a single ONNX file "
                          "holds; score it with the torch artifact (RewardScorer), or train a smaller backbone")
    with staged_folder(out) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the export is meant to be copied and served
        scorer.tokenizer.save_pretrained(tmp)
        if not (tmp / TOKENIZER_FILE).is_file():
            raise ExportError(f"the tokenizer of {model_dir} has no fast version ({TOKENIZER_FILE}), which the "
                              "on-device scorer needs; convert it with transformers' convert_slow_tokenizer")
        shutil.copyfile(standalone.__file__, tmp / STANDALONE_FILE)
        spec = scoring_spec(encoder, scorer.model)
        _write_spec(tmp, spec)

        prompts = [p for p, _ in PROBES] + [q.prompt for q in dev] * 2
        responses = [r for _, r in PROBES] + [q.chosen for q in dev] + [q.rejected for q in dev]
        say(f"scoring {len(prompts)} sequences with torch")
        r_torch = np.asarray(scorer.score(prompts, responses), dtype=np.float64)
        say("exporting fp32 ONNX and checking it against torch")
        exporter, fp32 = _export_checked(scorer, encoder, spec, tmp, prompts, responses, r_torch, opset)
        max_diff = float(np.abs(fp32.scores - r_torch).max())
        used_opset = opset if exporter == "torchscript" else max(opset, DYNAMO_MIN_OPSET)

        int8_scorer: OnnxRewardScorer | None = None
        agreement: float | None = None
        int8_diff: float | None = None
        gate_passed: bool | None = None
        forced = False
        scheme: str | None = None
        tried: dict[str, float] = {}
        if int8:
            int8_scorer, scheme, agreement, int8_diff, tried = _quantize_gated(
                tmp, int8_scheme, min_agreement, fp32.scores[len(PROBES):] if dev else None,
                prompts[len(PROBES):], responses[len(PROBES):], say)
            if agreement is not None:
                gate_passed = agreement >= min_agreement
                if not gate_passed and not force:
                    raise ExportFidelityError(agreement, min_agreement, len(dev), tried)
                if not gate_passed:
                    forced = True
                    _warn_forced(f"int8 fidelity gate FAILED: {agreement:.2%} of {len(dev)} dev pairs ordered like "
                                 f"fp32 ({tried_summary(tried)}), required {min_agreement:.2%}. --force was given: writing "
                                 f"{INT8_FILE} ({scheme}) ANYWAY; scoring.json marks it as failed, and its rankings "
                                 "may differ from the trained model's")
            else:
                forced = True
                _warn_forced(f"--force was given without dev pairs: writing {INT8_FILE} ({scheme}) WITHOUT its "
                             "fidelity gate; nobody checked that it orders pairs like the fp32 model. scoring.json "
                             "marks it unchecked")

        files = [FP32_FILE] + ([INT8_FILE] if int8 else [])
        spec["files"] = {name: {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                         for name in [*files, TOKENIZER_FILE]}  # another export's vocabulary scores garbage
        spec["exporter"], spec["opset"] = exporter, used_opset
        spec["checks"] = {
            "max_abs_diff_vs_torch": max_diff, "n_checked": len(prompts),
            "int8": None if not int8 else {
                "scheme": scheme, "tried": tried, "agreement": agreement, "min_agreement": min_agreement,
                "n_dev_pairs": len(dev), "max_abs_diff_vs_fp32": int8_diff, "passed": gate_passed, "forced": forced,
            },
        }
        _write_spec(tmp, spec)

        latency: dict[str, dict[int, float]] = {}
        tokens = min(LATENCY_TOKENS, encoder.max_length)
        if measure_latency:
            say("measuring latency")
            onnx = {"onnx_fp32": fp32.scorer} | ({"onnx_int8": int8_scorer} if int8_scorer is not None else {})
            latency = latency_ms(scorer.model, encoder, onnx, batches=LATENCY_BATCHES, tokens=tokens, threads=1)

        weights = Path(model_dir) / WEIGHTS_FILE
        sizes = {WEIGHTS_FILE: weights.stat().st_size} if weights.is_file() else {}
        sha = {WEIGHTS_FILE: scorer.card.get("sha256") or file_sha256(weights)} if weights.is_file() else {}
        sizes |= {name: spec["files"][name]["bytes"] for name in files}
        sha |= {name: spec["files"][name]["sha256"] for name in files}
        del fp32, int8_scorer  # close the sessions before the folder moves
    report = ExportReport(
        out_dir=out, fp32_path=out / FP32_FILE, int8_path=out / INT8_FILE if int8 else None, sizes=sizes, sha256=sha,
        exporter=exporter, opset=used_opset, max_abs_diff_vs_torch=max_diff, n_checked=len(prompts),
        n_dev_pairs=len(dev), agreement=agreement, min_agreement=min_agreement, int8_max_abs_diff=int8_diff,
        gate_passed=gate_passed, forced=forced, latency_ms=latency, latency_tokens=tokens,
        int8_scheme=scheme, int8_tried=tried,
    )
    log.info("exported %s: %s", out, report.to_json())
    return report


def order_agreement(rc_ref: np.ndarray, rr_ref: np.ndarray, rc: np.ndarray, rr: np.ndarray, tie: float = TIE) -> float:
    """Share of pairs whose order sign(r_c - r_r) is the same as in the reference; reference ties agree.

    >>> order_agreement(np.array([1.0, 0.0, 0.5]), np.zeros(3), np.array([2.0, -1.0, -0.5]), np.zeros(3))
    0.6666666666666666
    """
    d_ref = np.asarray(rc_ref, dtype=np.float64) - np.asarray(rr_ref, dtype=np.float64)  # (N,)
    d = np.asarray(rc, dtype=np.float64) - np.asarray(rr, dtype=np.float64)  # (N,)
    if d_ref.size == 0:
        raise ValueError("order agreement of no pairs is undefined; pass at least one pair")
    agree = (np.abs(d_ref) < tie) | (np.sign(d_ref) == np.sign(d))  # (N,)
    return float(agree.mean())


def _int8_fidelity(int8: OnnxRewardScorer, r_fp32: np.ndarray, prompts: list[str],
                   responses: list[str], batch_sizes: tuple[int, ...] = (32, 1)) -> tuple[float, float]:
    """(agreement, max |r_int8 - r_fp32|) on dev pairs laid out as [chosen..., rejected...]."""
    n = len(r_fp32) // 2
    agreements, diffs = [], []
    for batch_size in batch_sizes:
        r_int8 = np.asarray(int8.score(prompts, responses, batch_size), dtype=np.float64)  # (2N,)
        agreements.append(order_agreement(r_fp32[:n], r_fp32[n:], r_int8[:n], r_int8[n:]))
        diffs.append(float(np.abs(r_int8 - r_fp32).max()))
    return min(agreements), max(diffs)


def _quantize_gated(
    folder: Path, scheme: str, min_agreement: float, r_fp32: np.ndarray | None, prompts: list[str],
    responses: list[str], say: Callable[[str], None],
) -> tuple[OnnxRewardScorer, str, float | None, float | None, dict[str, float]]:
    """Write folder/INT8_FILE with the scheme asked for; "auto" tries SCHEMES in order and keeps the first that
    passes the gate, or, when none does, the one that orders the most dev pairs like fp32. Without r_fp32
    (no dev pairs; the caller forces) the first scheme is written unchecked.
    Returns (int8 scorer, scheme written, agreement, max |r_int8 - r_fp32|, {scheme tried: agreement})."""
    schemes = SCHEMES if scheme == "auto" else (scheme,)
    tried: dict[str, float] = {}
    max_diff: dict[str, float] = {}
    for name in schemes:
        quantize_int8(folder / FP32_FILE, folder / INT8_FILE, name)
        int8 = OnnxRewardScorer(folder, variant="int8", verify=False)
        if r_fp32 is None:
            return int8, name, None, None, tried
        say(f"gating {name} int8 on {len(r_fp32) // 2} dev pairs")
        # dynamic int8 takes its activation ranges from the batch: check batched and alone; weight-only int8
        # rounds no activation, so its scores do not depend on the batch
        tried[name], max_diff[name] = _int8_fidelity(int8, r_fp32, prompts, responses,
                                                     (32, 1) if name == "dynamic" else (32,))
        say(f"{name} int8 orders {tried[name]:.2%} of the dev pairs like fp32")
        if tried[name] >= min_agreement:
            return int8, name, tried[name], max_diff[name], tried
        del int8
    best = max(tried, key=lambda name: tried[name])
    if best != schemes[-1]:
        quantize_int8(folder / FP32_FILE, folder / INT8_FILE, best)
    return OnnxRewardScorer(folder, variant="int8", verify=False), best, tried[best], max_diff[best], tried


def tried_summary(tried: dict[str, float]) -> str:
    """"dynamic 92.71%, weights 99.10%": what each int8 scheme tried scored on the gate."""
    return ", ".join(f"{name} {agreement:.2%}" for name, agreement in tried.items())


def scoring_spec(encoder: PairEncoder, model: nn.Module) -> dict[str, Any]:
    """scoring.json without files and checks: what the standalone scorer needs to encode like training."""
    t = encoder.template
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if t.with_token_types else [])
    show = encoder.tokenizer.convert_ids_to_tokens
    pair = " ".join([*show(t.prefix), "{prompt}", *show(t.middle), "{response}", *show(t.suffix)])
    return {
        "format": EXPORT_FORMAT,
        "max_length": encoder.max_length,
        "min_prompt_tokens": encoder.min_prompt_tokens,
        "head_fraction": encoder.head_fraction,
        "text_pair": pair,
        "template": {"prefix": t.prefix, "middle": t.middle, "suffix": t.suffix, "token_types": t.with_token_types},
        "prompt_cut_marker": PROMPT_CUT_MARKER,
        "prompt_cut_marker_ids": encoder.marker_ids,
        "pad_token_id": encoder.pad_token_id,
        "inputs": inputs,
        "output": OUTPUT_NAME,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "files": {},
    }


def _write_spec(folder: Path, spec: dict[str, Any]) -> None:
    (folder / SCORING_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _warn_forced(message: str) -> None:
    warnings.warn(message, ExportFidelityWarning, stacklevel=3)  # once: `rewardnode export` prints it


@dataclass
class _Checked:
    scorer: OnnxRewardScorer
    scores: np.ndarray


def _export_checked(
    scorer: RewardScorer, encoder: PairEncoder, spec: dict[str, Any], folder: Path,
    prompts: list[str], responses: list[str], r_torch: np.ndarray, opset: int,
) -> tuple[str, _Checked]:
    """Export model.onnx with the first exporter whose scores match torch; (exporter name, its scorer)."""
    tolerance = FP32_TOLERANCE * max(1.0, float(np.abs(r_torch).max()))
    problems = []
    for exporter in EXPORTERS:
        try:
            export_fp32(scorer.model, encoder, folder / FP32_FILE, inputs=spec["inputs"], opset=opset,
                        dynamo=exporter == "dynamo")
            onnx_scorer = OnnxRewardScorer(folder, variant="fp32", verify=False)
            _check_tokenization(onnx_scorer, encoder, prompts, responses)
            scores = np.asarray(onnx_scorer.score(prompts, responses), dtype=np.float64)
            small = np.asarray(onnx_scorer.score(prompts, responses, batch_size=3), dtype=np.float64)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 -- an exporter bug; the next exporter may work
            problems.append(f"{exporter}: {type(e).__name__}: {str(e)[:300]}")
            log.info("%s export failed: %s", exporter, e)
            continue
        diff = float(max(np.abs(scores - r_torch).max(), np.abs(small - r_torch).max()))
        if diff <= tolerance:
            return exporter, _Checked(onnx_scorer, scores)
        problems.append(f"{exporter}: max |r_onnx - r_torch| = {diff:.3g} > {tolerance:.3g}")
        log.info("%s export disagrees with torch by %.3g", exporter, diff)
    raise ExportError(f"no ONNX exporter reproduced the torch model ({'; '.join(problems)}); score with the torch "
                      "artifact (RewardScorer) instead, or report the model type with this message")


class _RewardOutput(nn.Module):
    """A sequence classifier as (input_ids, attention_mask[, token_type_ids]) -> (B,) rewards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return rewards(self.model, batch)  # (B, T) -> (B,)


def export_fp32(
    model: nn.Module, encoder: PairEncoder, path: Path, *, inputs: list[str], opset: int, dynamo: bool
) -> None:
    """torch.onnx.export with dynamic batch and sequence axes, traced on a padded batch of two probes."""
    ids, types, _ = encoder.encode([PROBES[0][0], PROBES[3][0]], [PROBES[0][1], PROBES[3][1]])
    batch = pad_batch(ids, types, encoder.pad_token_id)  # (2, T), the first row padded
    args = tuple(batch[name] for name in inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs} | {OUTPUT_NAME: {0: "batch"}}
    wrapper = _RewardOutput(model).eval()
    with _quiet(), torch.no_grad(), _eager_attention(model):
        if dynamo:
            torch.onnx.export(wrapper, args, str(path), input_names=inputs, output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=max(opset, DYNAMO_MIN_OPSET), dynamo=True,
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(wrapper, args, str(path), input_names=inputs, output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Trace the plain-op attention (MatMul, Softmax): on onnxruntime's CPU it ran about 10% faster in fp32
    and 15-25% faster in int8 than the traced scaled_dot_product_attention (scripts/bench_scoring.py)."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = getattr(model, "set_attn_implementation", None)
    if not callable(switch) or before in (None, "eager"):
        yield
        return
    try:
        switch("eager")
    except (ValueError, ImportError) as e:  # the model has no eager attention: export what it has
        log.info("exporting with %s attention: %s", before, e)
        yield
        return
    try:
        yield
    finally:
        switch(before)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter warnings (TracerWarning etc.): the exported graph is checked against torch after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _check_tokenization(onnx_scorer: OnnxRewardScorer, encoder: PairEncoder, prompts: list[str],
                        responses: list[str]) -> None:
    expected_ids, expected_types, _ = encoder.encode(prompts, responses)
    ids, types = onnx_scorer.encode(prompts, responses)
    for i, (a, b) in enumerate(zip(ids, expected_ids, strict=True)):
        if a != b or (types is not None and expected_types is not None and types[i] != expected_types[i]):
            raise ExportError(
                f"the tokenizers package encodes ({prompts[i][:40]!r}, {responses[i][:40]!r}) differently from "
                f"transformers ({len(a)} vs {len(b)} tokens); the on-device scorer would score other inputs than "
                "training did. Save the tokenizer with a current transformers version and export again"
            )


# ----------------------------------------------------------------------------------------------
# Latency


def latency_ms(
    model: nn.Module,
    encoder: PairEncoder,
    onnx: dict[str, OnnxRewardScorer],
    *,
    batches: Sequence[int] = LATENCY_BATCHES,
    tokens: int = LATENCY_TOKENS,
    threads: int = 1,
    budget_s: float = 1.0,
) -> dict[str, dict[int, float]]:
    """Median ms per call of the torch model and each ONNX scorer on batches of `tokens`-token sequences.

    Times model calls only (padding included, tokenization excluded); torch runs with `threads`
    intra-op threads, each ONNX scorer with the threads it was created with.
    """
    ids, types = latency_inputs(encoder, max(batches), tokens)
    out: dict[str, dict[int, float]] = {"torch": {}}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        for b in batches:
            batch = pad_batch(ids[:b], types[:b] if types else None, encoder.pad_token_id)

            def call(batch: dict[str, torch.Tensor] = batch) -> None:
                with torch.inference_mode():
                    rewards(model, batch)

            out["torch"][b] = time_ms(call, budget_s=budget_s)
    finally:
        torch.set_num_threads(before)
    for name, scorer in onnx.items():
        out[name] = {}
        for b in batches:
            rows, typed = ids[:b], types[:b] if types else None

            def run(s: OnnxRewardScorer = scorer, rows: list[list[int]] = rows,
                    typed: list[list[int]] | None = typed) -> None:
                s.run(rows, typed)

            out[name][b] = time_ms(run, budget_s=budget_s)
    return out


def latency_inputs(encoder: PairEncoder, n: int, tokens: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """n templated (prompt, response) sequences of exactly `tokens` ids, made of real text tokens."""
    text = "the assistant should answer the question clearly and politely with the facts it knows"
    filler = encoder.tokenize([text])[0] * (tokens // 4 + 1)
    body = tokens - encoder.template.n_special
    if body < 2:
        raise ValueError(f"tokens = {tokens} must be >= {encoder.template.n_special + 2} (special tokens + 2)")
    ids, types = [], []
    for i in range(n):
        words = filler[i % 7:] + filler[: i % 7]  # rows differ a little
        built, typed, _ = encoder.build(words[: body // 2], words[body // 2: body])
        ids.append(built)
        types.append(typed or [])
    return ids, types if encoder.template.with_token_types else None


def time_ms(fn: Callable[[], object], *, budget_s: float = 1.0, min_runs: int = 5, max_runs: int = 200) -> float:
    """Median wall time of fn() in ms, after two warm-up calls; runs until budget_s or max_runs."""
    fn()
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or (len(times) < max_runs and time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
