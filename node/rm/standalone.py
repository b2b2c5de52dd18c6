"""On-device reward scoring: the exported ONNX reward model and its tokenizer, without torch or transformers.

This file is the on-device path. It imports only onnxruntime, tokenizers, numpy and the standard
library, and nothing of rewardnode, so it works as a single file copied onto a phone, an edge box or
a server without the training stack (`export_onnx` also copies it into every export folder):

    pip install onnxruntime tokenizers numpy          # onnxruntime-mobile / -android builds work too
    from standalone import OnnxRewardScorer
    scorer = OnnxRewardScorer("rm-onnx/")             # the folder node.rm.export.export_onnx wrote
    scorer.score(["How do I reset my password?"], ["Open Settings, then Account, then ..."])

    python standalone.py rm-onnx/ < pairs.jsonl       # {"prompt", "response"} per line -> one reward per line

The folder holds model.onnx (fp32), optionally model.int8.onnx, tokenizer.json and scoring.json. The
texts are encoded exactly as in training (node/rm/data.py, `PairEncoder`): each text is tokenized
without special tokens, `truncate_pair` keeps the response where possible and cuts the middle of the
prompt at the training marker, and the template read off the training tokenizer (prefix + prompt +
middle + response + suffix, token types 0 then 1 for BERT-likes) is stored in scoring.json as token
ids. `truncate_pair` is copied here verbatim; tests/node/rm/test_standalone.py checks that the ids
equal PairEncoder's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

SCORING_FILE = "scoring.json"
TOKENIZER_FILE = "tokenizer.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_FORMAT = "rewardnode-rm-onnx/1"
OUTPUT_NAME = "reward"
VARIANTS = ("auto", "int8", "fp32")


def truncate_pair(
    prompt_ids: list[int],
    response_ids: list[int],
    *,
    budget: int,
    min_prompt_tokens: int,
    marker_ids: list[int],
    head_fraction: float = 0.25,
) -> tuple[list[int], list[int], bool]:
    """Fit prompt + response into `budget` tokens; returns (prompt, response, truncated).

    A copy of node.rm.data.truncate_pair (keep the two identical):
    1. The response keeps min(len, budget - min(len(prompt), min_prompt_tokens)) tokens from its start.
    2. A prompt longer than what is left keeps head_fraction of it from its start (the question or
       instructions) and the rest from its end (the last turn), with `marker_ids` between them.

    >>> truncate_pair(list(range(10)), [90, 91], budget=8, min_prompt_tokens=4, marker_ids=[-1], head_fraction=0.5)
    ([0, 1, -1, 7, 8, 9], [90, 91], True)
    """
    if len(prompt_ids) + len(response_ids) <= budget:
        return prompt_ids, response_ids, False
    response_cap = max(budget - min(len(prompt_ids), min_prompt_tokens), 0)
    response_ids = response_ids[:response_cap]
    prompt_budget = budget - len(response_ids)
    if len(prompt_ids) > prompt_budget:
        keep = prompt_budget - len(marker_ids)
        if keep <= 0:  # no room for a marker: the end of the prompt (its last turn) matters most
            prompt_ids = prompt_ids[len(prompt_ids) - prompt_budget:] if prompt_budget > 0 else []
        else:
            head = int(keep * head_fraction)
            prompt_ids = prompt_ids[:head] + marker_ids + prompt_ids[len(prompt_ids) - (keep - head):]
    return prompt_ids, response_ids, True


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ScoringSpec:
    """scoring.json: how texts become the model's inputs (what training's PairEncoder did)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        if not isinstance(spec, dict):
            raise TypeError(f"a JSON {_json_type(spec)}, not an object")
        if spec.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{SCORING_FILE} has format {spec.get('format')!r}, this scorer reads {EXPORT_FORMAT!r}; "
                             "export the model again with this version of rewardnode")
        template = spec["template"]
        self.raw = spec
        self.max_length = int(spec["max_length"])
        self.prefix = [int(i) for i in template["prefix"]]
        self.middle = [int(i) for i in template["middle"]]
        self.suffix = [int(i) for i in template["suffix"]]
        self.with_token_types = bool(template["token_types"])
        self.budget = self.max_length - len(self.prefix) - len(self.middle) - len(self.suffix)
        self.min_prompt_tokens = min(int(spec["min_prompt_tokens"]), self.budget - 1)
        self.head_fraction = float(spec["head_fraction"])
        self.marker_ids = [int(i) for i in spec["prompt_cut_marker_ids"]]
        self.pad_token_id = int(spec["pad_token_id"])
        self.inputs = list(spec["inputs"])
        self.files: dict[str, dict[str, Any]] = spec.get("files", {})

    def build(self, prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], list[int] | None]:
        """(input_ids, token_type_ids or None) of one truncated, templated sequence."""
        p, r, _ = truncate_pair(prompt_ids, response_ids, budget=self.budget, min_prompt_tokens=self.min_prompt_tokens,
                                marker_ids=self.marker_ids, head_fraction=self.head_fraction)
        ids = self.prefix + p + self.middle + r + self.suffix
        if not self.with_token_types:
            return ids, None
        n0 = len(self.prefix) + len(p) + len(self.middle)
        return ids, [0] * n0 + [1] * (len(ids) - n0)


class OnnxRewardScorer:
    """Scores (prompt, response) pairs with an exported ONNX reward model, truncating as in training."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        threads: int = 1,
        *,
        variant: str = "auto",
        verify: bool = True,
        providers: Sequence[str] | None = None,
    ) -> None:
        """Load `folder`; variant "auto" takes model.int8.onnx when the export wrote one, else model.onnx.

        verify=True checks the sha256 of the model file and of tokenizer.json against scoring.json (a few ms
        per 10 MB); an export older than the tokenizer's entry has its model file checked only.
        `providers` are onnxruntime execution providers, CPU by default.
        """
        folder = Path(folder)
        if variant not in VARIANTS:
            raise ValueError(f"variant = {variant!r} is unknown; use one of {', '.join(VARIANTS)}")
        if threads < 1:
            raise ValueError(f"threads = {threads} must be >= 1")
        spec_path = folder / SCORING_FILE
        if not spec_path.is_file():
            raise ValueError(f"{folder} is not an exported reward model (no {SCORING_FILE}); export one with "
                             "node.rm.export.export_onnx")
        self.folder = folder
        again = "copy the whole export folder again, or export the model again"
        try:
            self.spec = ScoringSpec(json.loads(spec_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            why = f"no {e} entry" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"{spec_path} is not a valid {SCORING_FILE} ({why}); {again}") from None
        if variant == "auto":
            variant = "int8" if INT8_FILE in self.spec.files else "fp32"
        self.variant = variant
        self.model_path = folder / (INT8_FILE if variant == "int8" else FP32_FILE)
        if not self.model_path.is_file():
            raise ValueError(f"{self.model_path} does not exist; export with int8 to get {INT8_FILE}, or pass "
                             "variant='fp32'")
        if verify:
            _check_sha256(self.model_path, self.spec.files.get(self.model_path.name, {}).get("sha256"),
                          "copy the whole export folder again")

        tokenizer_path = folder / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise ValueError(f"{folder} has no {TOKENIZER_FILE}, which the scorer encodes texts with; "
                             f"{again}")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for a bad file
            raise ValueError(f"{tokenizer_path} does not load ({e}); {again}") from None
        expected_tokenizer = self.spec.files.get(TOKENIZER_FILE, {}).get("sha256")
        if verify and expected_tokenizer is not None:  # None: exported before scoring.json recorded it
            # another export's tokenizer.json loads fine and gives other ids: silently wrong scores
            _check_sha256(tokenizer_path, expected_tokenizer, again)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model_path), options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(self.spec.inputs):
            raise ValueError(f"{self.model_path.name} takes inputs {names}, {SCORING_FILE} lists {self.spec.inputs}; "
                             "the folder mixes files of two exports: export again")

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (unique texts are tokenized once)."""
        unique = list(dict.fromkeys(texts))
        encodings = self.tokenizer.encode_batch(unique, add_special_tokens=False) if unique else []
        by_text = {t: e.ids for t, e in zip(unique, encodings, strict=True)}
        return [list(by_text[t]) for t in texts]

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str]
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """(input_ids, token_type_ids or None) for each (prompt, response), as PairEncoder.encode gives them."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one prompt per response")
        built = [self.spec.build(p, r) for p, r in zip(self.tokenize(prompts), self.tokenize(responses), strict=True)]
        types = [b[1] or [] for b in built] if self.spec.with_token_types else None
        return [b[0] for b in built], types

    def run(self, ids: Sequence[list[int]], types: Sequence[list[int]] | None) -> np.ndarray:
        """Rewards (B,) float32 of already encoded sequences, right-padded into one batch."""
        t = max(len(s) for s in ids)
        input_ids: np.ndarray = np.full((len(ids), t), self.spec.pad_token_id, dtype=np.int64)  # (B, T)
        attention_mask: np.ndarray = np.zeros((len(ids), t), dtype=np.int64)  # (B, T)
        for i, s in enumerate(ids):
            input_ids[i, : len(s)] = s
            attention_mask[i, : len(s)] = 1
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.spec.inputs:
            token_type_ids: np.ndarray = np.zeros((len(ids), t), dtype=np.int64)  # (B, T) padding gets type 0
            for i, s in enumerate(types or []):
                token_type_ids[i, : len(s)] = s
            feed["token_type_ids"] = token_type_ids
        reward: np.ndarray = self.session.run([OUTPUT_NAME], feed)[0]  # (B,)
        return reward

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """One reward per (prompt, response), in input order; scored longest first to pad little."""
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size} must be >= 1")
        ids, types = self.encode(prompts, responses)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = [0.0] * len(ids)
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            r = self.run([ids[i] for i in idx], [types[i] for i in idx] if types is not None else None)
            for i, value in zip(idx, r.tolist(), strict=True):
                out[i] = float(value)
        return out

    __call__ = score


def read_pairs(lines: Iterable[str | bytes], where: str = "stdin") -> tuple[list[str], list[str]]:
    """(prompts, responses) of JSON lines {"prompt": str, "response": str}; blank lines are skipped.

    A bad line raises ValueError naming it: "stdin line 3: no "response" field; ...".
    """
    prompts: list[str] = []
    responses: list[str] = []
    shape = 'give one JSON object {"prompt": "...", "response": "..."} per line'
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            raise ValueError(f"{where} line {n}: not UTF-8 ({e.reason} at byte {e.start}); {shape}") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} line {n}: not JSON ({e.msg} at column {e.colno}); {shape}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where} line {n}: a JSON {_json_type(row)}, not an object; {shape}")
        for key in ("prompt", "response"):
            if key not in row:
                raise ValueError(f'{where} line {n}: no "{key}" field; {shape}')
            if not isinstance(row[key], str):
                kind = _json_type(row[key])
                raise ValueError(f'{where} line {n}: "{key}" is a JSON {kind}, not a string; {shape}')
            try:
                row[key].encode("utf-8")
            except UnicodeEncodeError as e:  # a lone "\\ud800" escape: valid JSON, not text
                char = f"\\u{ord(row[key][e.start]):04x}"
                raise ValueError(f'{where} line {n}: "{key}" holds a lone surrogate ({char} at character '
                                 f"{e.start}), which is not text; escape characters outside the BMP as "
                                 "surrogate pairs") from None
        prompts.append(row["prompt"])
        responses.append(row["response"])
    return prompts, responses


def _check_sha256(path: Path, expected: str | None, fix: str) -> None:
    """Refuse a file whose sha256 is not the one scoring.json records for it."""
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"{path} has sha256 {actual}, {SCORING_FILE} says {expected}; the file was modified "
                         f"or belongs to another export: {fix}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Score JSONL {"prompt", "response"} lines from stdin; print one reward per line."""
    parser = argparse.ArgumentParser(description="Score (prompt, response) pairs with an exported reward model.")
    parser.add_argument("folder", help="the export folder (scoring.json, model.onnx, tokenizer.json)")
    parser.add_argument("--variant", choices=VARIANTS, default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        scorer = OnnxRewardScorer(args.folder, args.threads, variant=args.variant)
        prompts, responses = read_pairs(getattr(sys.stdin, "buffer", sys.stdin))
        scores = scorer.score(prompts, responses, args.batch_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for s in scores:
        print(repr(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
