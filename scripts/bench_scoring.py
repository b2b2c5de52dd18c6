"""Scoring benchmark: torch vs ONNX fp32 vs ONNX int8 for the reward model, and the export's size and fidelity.

onnx_int8 is dynamic int8 (int8 compute); onnx_int8w the weight-only variant (`export --int8 weights`:
int8 weights, fp32 compute).

    python scripts/bench_scoring.py [--model DIR | --train 2000] [--tokens 128] [--threads 1 2] [--batches 1 32]
                                    [--dev 200] [--profile]

Without --model it scores all-MiniLM-L6-v2 (the bundled backbone) with an untrained one-output head
(latency does not depend on the head's weights), or with --train N one fine-tuned for an epoch on N
synthetic pairs, so the int8 gate sees reward gaps of a trained model. The model is exported with export_onnx (fp32 + int8);
--dev synthetic pairs run the int8 fidelity gate (forced, so an untrained head still gets timed) and
the agreement is printed. --profile adds where int8 batch-1 time goes (ONNX Runtime's profiler, per
operator type) beside the rate of a lone int8 MatMul of the model's shapes (the matmul ceiling). Latency is the median ms per model call on batches of `--tokens`-token
(prompt, response) sequences, tokenization excluded; the last line times score() with tokenization.
Targets (on-device path): int8 file <= 25 MB; batch 1, 128 tokens, 1 thread <= 10 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from node.rm.artifact import RewardScorer, save_reward_model  # noqa: E402
from node.rm.config import TrainConfig  # noqa: E402
from node.rm.data import PreferencePair  # noqa: E402
from node.rm.export import ExportFidelityWarning, export_onnx, latency_inputs, latency_ms, time_ms  # noqa: E402
from node.rm.model import load_backbone  # noqa: E402
from node.rm.standalone import OnnxRewardScorer  # noqa: E402
from node.rm.train import train_reward_model  # noqa: E402

SIZE_TARGET_MB = 25.0
LATENCY_TARGET_MS = 10.0
TOPICS = ["passwords", "invoices", "shipping", "refunds", "the API", "holidays", "the office", "payroll"]


def synthetic_dev(n: int, seed: int = 0) -> list[PreferencePair]:
    """Support-style prompts with a specific and a vague answer each."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        prompt = f"Ticket {seed}-{i}: a customer asks how {topic} work here and what to do next, step {rng.randint(1, 9)}."
        good = f"Here is how {topic} work: open the portal, choose {rng.choice(TOPICS)}, and follow the {rng.randint(2, 6)} steps."
        bad = f"I am not sure about {topic}; maybe ask someone else {rng.randint(1, 99)} days later."
        pairs.append(PreferencePair(prompt, good, bad, source="bench"))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a saved reward-model folder (default: all-MiniLM-L6-v2, untrained head)")
    parser.add_argument("--max-length", type=int, default=256, help="max_length for the default model's card")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dev", type=int, default=200, help="synthetic dev pairs for the int8 fidelity gate")
    parser.add_argument("--train", type=int, default=0,
                        help="fine-tune the default model for one epoch on this many synthetic pairs first, so "
                             "the int8 gate sees a trained head (0: untrained head)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per cell")
    parser.add_argument("--profile", action="store_true",
                        help="profile int8 batch 1 on one thread per operator type, beside a lone int8 MatMul's rate")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        model_dir = Path(args.model) if args.model else Path(tmp) / "rm"
        if not args.model:
            card = {"base_model": "minilm", "scoring": {"max_length": args.max_length, "min_prompt_tokens": 64,
                                                         "prompt_head_fraction": 0.25}}
            if args.train:
                config = TrainConfig(max_length=args.max_length, batch_size=16, learning_rate=5e-5, device="cpu",
                                     num_threads=max(args.threads))
                t = time.perf_counter()
                result = train_reward_model(synthetic_dev(args.train, seed=1), [], config, out_dir=Path(tmp) / "run",
                                            progress=False)
                print(f"trained all-MiniLM-L6-v2 on {args.train} synthetic pairs in {time.perf_counter() - t:.0f} s")
                model, tokenizer = result.model, result.tokenizer
            else:
                torch.manual_seed(0)
                model, tokenizer = load_backbone("minilm")
            save_reward_model(model, tokenizer, model_dir, card)
        out = Path(tmp) / "onnx"
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExportFidelityWarning)  # the agreement is printed below
            report = export_onnx(model_dir, out, int8=True, dev_pairs=synthetic_dev(args.dev), force=True,
                                 int8_scheme="dynamic", measure_latency=False)
        export_s = time.perf_counter() - t
        weights = weight_only_copy(out, Path(tmp) / "onnx-weights")

        torch_scorer = RewardScorer(model_dir)
        encoder = torch_scorer.encoder
        name = args.model or f"all-MiniLM-L6-v2 + {'trained' if args.train else 'untrained'} head"
        print(f"model: {name}; torch {torch.__version__}, "
              f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"export: {export_s:.1f} s with the {report.exporter} exporter, opset {report.opset}; max |onnx fp32 - "
              f"torch| = {report.max_abs_diff_vs_torch:.2e} over {report.n_checked} sequences")
        gate = "passed" if report.gate_passed else "FAILED (forced)"
        print(f"int8 fidelity: order agreement with fp32 = {report.agreement:.4f} on {report.n_dev_pairs} synthetic "
              f"pairs (gate {report.min_agreement}: {gate}); max |int8 - fp32| = {report.int8_max_abs_diff:.3g}")
        print()
        header = f"{'backend':<12}{'threads':>8}" + "".join(f"{f'b{b} ms':>12}" for b in args.batches) + \
            "".join(f"{f'b{b} vs torch':>14}" for b in args.batches)
        print(f"latency: median ms per call, {args.tokens}-token (prompt, response) sequences")
        print(header)
        print("-" * len(header))
        rows: dict[tuple[str, int], dict[int, float]] = {}
        for threads in args.threads:
            onnx = {name: OnnxRewardScorer(out, threads, variant=variant)
                    for name, variant in (("onnx_fp32", "fp32"), ("onnx_int8", "int8"))}
            onnx["onnx_int8w"] = OnnxRewardScorer(weights, threads, variant="int8", verify=False)
            ms = latency_ms(torch_scorer.model, encoder, onnx, batches=args.batches, tokens=args.tokens,
                            threads=threads, budget_s=args.budget)
            for name in ("torch", "onnx_fp32", "onnx_int8", "onnx_int8w"):
                rows[(name, threads)] = ms[name]
                ratios = "".join(f"{ms['torch'][b] / ms[name][b]:>13.2f}x" for b in args.batches)
                print(f"{name:<12}{threads:>8}" + "".join(f"{ms[name][b]:>12.2f}" for b in args.batches) + ratios)
        print()

        int8_mb = report.sizes["model.int8.onnx"] / 1e6
        fp32_mb = report.sizes["model.onnx"] / 1e6
        st_mb = report.sizes.get("model.safetensors", 0) / 1e6
        print(f"size: model.safetensors {st_mb:.1f} MB, model.onnx {fp32_mb:.1f} MB, model.int8.onnx {int8_mb:.1f} MB "
              f"({fp32_mb / int8_mb:.1f}x smaller than fp32); target <= {SIZE_TARGET_MB:.0f} MB: "
              f"{'OK' if int8_mb <= SIZE_TARGET_MB else 'MISSED'}")
        print(f"weight-only int8 (onnx_int8w: --int8 weights, fp32 compute): "
              f"{(weights / 'model.int8.onnx').stat().st_size / 1e6:.1f} MB")
        if (("onnx_int8", 1) in rows) and 1 in args.batches:
            b1 = rows[("onnx_int8", 1)][1]
            print(f"int8 batch 1, {args.tokens} tokens, 1 thread: {b1:.2f} ms; target <= {LATENCY_TARGET_MS:.0f} ms: "
                  f"{'OK' if b1 <= LATENCY_TARGET_MS else 'MISSED'}")
        scorer = OnnxRewardScorer(out, 1, variant="int8")
        ids, _ = latency_inputs(encoder, 1, args.tokens)
        text = encoder.tokenizer.decode(ids[0][len(encoder.template.prefix): len(ids[0]) // 2])
        n_tokens = len(scorer.encode([text], [text])[0][0])
        e2e = time_ms(lambda: scorer.score([text], [text]), budget_s=args.budget)
        print(f"int8 score() of one {n_tokens}-token pair, tokenization included, 1 thread: {e2e:.2f} ms")
        if args.profile:
            profile_int8(out, model_dir, ids[0], Path(tmp), runs=50)


def weight_only_copy(onnx_dir: Path, out: Path) -> Path:
    """A copy of the export folder whose model.int8.onnx is the weight-only int8 variant (not gated here)."""
    import shutil

    from node.rm.quantize import quantize_int8

    shutil.copytree(onnx_dir, out)
    quantize_int8(onnx_dir / "model.onnx", out / "model.int8.onnx", "weights")
    return out


QUANTIZED_MATMULS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeLinear")


def profile_int8(onnx_dir: Path, model_dir: Path, ids: list[int], tmp: Path, runs: int) -> None:
    """Print int8 batch-1 kernel time per operator type, and a lone int8 MatMul's rate for the model's shapes."""
    import collections
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoConfig

    options = options_one_thread()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp / "ort-profile")
    session = ort.InferenceSession(str(onnx_dir / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    row = np.asarray([ids], dtype=np.int64)
    feeds = {i.name: row if i.name == "input_ids" else np.ones_like(row) if i.name == "attention_mask"
             else np.zeros_like(row) for i in session.get_inputs()}
    for _ in range(runs):
        session.run(None, feeds)
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"].get("op_name", "?")] += event["dur"] / 1e3 / runs
    total = sum(per_op.values())
    quantized = sum(ms for op, ms in per_op.items() if op in QUANTIZED_MATMULS)
    print(f"\nint8 batch 1, {len(ids)} tokens, 1 thread, ONNX Runtime profiler: {total:.2f} ms of kernels per call "
          f"(profiling adds overhead); quantized matmuls {quantized:.2f} ms ({100 * quantized / total:.0f}%)")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {op:<24}{ms:>7.2f} ms {100 * ms / total:>4.0f}%")

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    hidden, inner = config.hidden_size, config.intermediate_size
    rng = np.random.default_rng(0)
    lone_ms: dict[tuple[int, int], float] = {}
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's pre-processing advice
    for k, n in ((hidden, hidden), (hidden, inner), (inner, hidden)):
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(ids), k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(ids), n])],
            [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, tmp / "mm.onnx")
        quantize_dynamic(tmp / "mm.onnx", tmp / "mm.int8.onnx", per_channel=True, weight_type=QuantType.QInt8)
        lone = ort.InferenceSession(str(tmp / "mm.int8.onnx"), options_one_thread(), providers=["CPUExecutionProvider"])
        x = rng.standard_normal((len(ids), k)).astype(np.float32)

        def run(s: ort.InferenceSession = lone, x: np.ndarray = x) -> None:
            s.run(None, {"x": x})

        ms = lone_ms[k, n] = time_ms(run, budget_s=1.0)
        print(f"  lone int8 MatMul [{len(ids)}x{k}]x[{k}x{n}], 1 thread: {ms:.3f} ms, "
              f"{2 * len(ids) * k * n / ms / 1e6:.0f} GOP/s")
    layer = 4 * lone_ms[hidden, hidden] + lone_ms[hidden, inner] + lone_ms[inner, hidden]
    floor = (config.num_hidden_layers - 1) * layer + 2 * lone_ms[hidden, hidden]
    print(f"  matmul floor at those rates: {config.num_hidden_layers - 1} full layers (4 [h x h] + [h x i] + [i x h]) "
          f"+ K and V of the [CLS]-only last layer = {floor:.2f} ms, vs {quantized:.2f} ms profiled in the model")


def options_one_thread() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    return options


if __name__ == "__main__":
    main()
