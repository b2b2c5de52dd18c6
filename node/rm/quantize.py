"""int8 variants of an exported fp32 ONNX reward model (node.rm.export gates whichever is written).

    dynamic   onnxruntime dynamic quantization: per-channel int8 weights for MatMul and Gather, activations
              quantized to uint8 at run time with ONE scale per tensor; int8 compute (MatMulInteger), about
              2.3x faster than fp32 on one core. The single activation scale is coarse: on MiniLM reward
              models it reorders 5-15% of close pairs, so it often fails the fidelity gate.
    weights   int8 weights only: every weight matrix is stored as int8 with one fp16 scale per block of
              WEIGHT_BLOCK consecutive input rows and output column (embedding tables: one scale per row;
              a matrix with a side under MIN_SIDE stays fp32), turned back into fp32 by Cast -> Mul ->
              Reshape nodes on constants, which onnxruntime folds once when the session loads. The file
              is as small as dynamic's; compute, memory at run time and latency are fp32's, and no
              activation is ever rounded, so rewards move ~1% and pair orders almost never. Plain ONNX
              ops: any runtime loads it, folded or not, with the same scores.

SCHEMES lists them in the order "auto" tries them: the fast one first, the faithful one when the fast
one fails its gate.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMES = ("dynamic", "weights")
WEIGHT_BLOCK = 16
"""Input rows per int8 scale in the weights scheme. Scales are fp16: 2 bytes per 16 weights, the bytes of
fp32 scales per 32. Block 16 halves block 32's mean reward error on MiniLM reward models (the demo's
near-chance federated model: 0.0025 -> 0.0013; a trained one: 0.036 -> 0.030); which pairs with a margin
near zero flip comes and goes with the exact rounding (block 32 / 16: 1 / 0 of the demo's 241 held-out
pairs, 0 / 2 of the trained model's 576)."""
MIN_SIDE = 32
"""A matrix with a side shorter than this stays fp32: token-type tables and one-output heads weigh
nothing, and their rounding error reaches every token or the reward itself (quantizing MiniLM's 2 x 384
token-type table alone took a trained model from 100% to 99.1% of its pair orders)."""
FP16_MIN_NORMAL = 2.0**-14


def quantize_int8(fp32_path: Path, int8_path: Path, scheme: str = "dynamic") -> None:
    """Write the `scheme` int8 variant (see the module docstring) of the fp32 ONNX model at fp32_path."""
    if scheme == "dynamic":
        _quantize_dynamic(fp32_path, int8_path)
    elif scheme == "weights":
        _quantize_weights(fp32_path, int8_path)
    else:
        raise ValueError(f"int8 scheme {scheme!r} is unknown; use one of {', '.join(SCHEMES)}")


def _quantize_dynamic(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="rm-int8-") as scratch:
        source = fp32_path
        for i, skip_symbolic in enumerate((False, True)):  # symbolic shape inference fails on some graphs
            pre = Path(scratch) / f"pre{i}.onnx"
            try:  # shape inference + constant folding, so the quantizer sees every weight MatMul
                # A failed symbolic pass dumps sym_shape_infer_temp.onnx (+ data files) into the working
                # directory: run it inside the scratch folder so nothing leaks into the caller's cwd.
                with contextlib.chdir(scratch):
                    quant_pre_process(str(fp32_path.resolve()), str(pre.resolve()),
                                      skip_symbolic_shape=skip_symbolic)
                source = pre
                break
            except Exception as e:  # noqa: BLE001 -- pre-processing is an optimization; the raw graph quantizes too
                log.info("quantization pre-processing (skip_symbolic_shape=%s) failed: %s", skip_symbolic, e)
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # quantize_dynamic logs advice on the root logger
        try:
            quantize_dynamic(source, int8_path, per_channel=True, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)


def _quantize_weights(fp32_path: Path, int8_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    dequantize: list[onnx.NodeProto] = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
            continue
        rows, cols = int(init.dims[0]), int(init.dims[1])
        layout = _block_layout(consumers.get(init.name, []))
        if layout is None or min(rows, cols) < MIN_SIDE:
            continue
        q, scale = quantize_blocks(numpy_helper.to_array(init), *layout)
        name = init.name
        graph.initializer.remove(init)
        graph.initializer.extend([
            numpy_helper.from_array(q, f"{name}.int8"), numpy_helper.from_array(scale, f"{name}.scale"),
            numpy_helper.from_array(np.array([rows, cols], dtype=np.int64), f"{name}.shape"),
        ])
        dequantize += [
            helper.make_node("Cast", [f"{name}.int8"], [f"{name}.cast"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Cast", [f"{name}.scale"], [f"{name}.scale32"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}.cast", f"{name}.scale32"], [f"{name}.blocks"]),
            helper.make_node("Reshape", [f"{name}.blocks", f"{name}.shape"], [name]),
        ]
    if not dequantize:
        raise ValueError(f"{fp32_path} has no 2-D fp32 weight read by MatMul, Gemm or Gather to quantize")
    for node in reversed(dequantize):  # constants first: the graph stays topologically sorted
        graph.node.insert(0, node)
    onnx.save(model, str(int8_path))


def _block_layout(uses: list[tuple[Any, int]]) -> tuple[int, int] | None:
    """(axis, block) for quantize_blocks: blocks run along the axis a matmul sums over (MatMul B: rows; Gemm B:
    rows, or columns under transB), an embedding table gets one scale per row. None when any consumer is
    something else (or they disagree), so the tensor stays fp32."""
    layouts = set()
    for node, k in uses:
        if node.op_type == "MatMul" and k == 1:
            layouts.add((0, WEIGHT_BLOCK))
        elif node.op_type == "Gemm" and k == 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            layouts.add((1 if trans_b else 0, WEIGHT_BLOCK))
        elif node.op_type == "Gather" and k == 0:
            layouts.add((1, 0))
        else:
            return None
    return layouts.pop() if len(layouts) == 1 else None


def quantize_blocks(w: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of a 2-D fp32 matrix with one fp16 scale per `block` consecutive elements along `axis`
    (the whole axis when block is 0 or does not divide it; scales at least FP16_MIN_NORMAL, so a block of
    tiny weights stays representable). Returns (q, scale) shaped for broadcasting, with q * scale reshaped
    to w.shape giving the dequantized matrix:
    axis 0: q (R/b, b, C), scale (R/b, 1, C); axis 1: q (R, C/b, b), scale (R, C/b, 1).

    >>> q, s = quantize_blocks(np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32), axis=0, block=0)
    >>> (q * s).reshape(2, 2).astype(float).round(3).tolist()
    [[1.0, -2.016], [0.504, 4.0]]
    """
    rows, cols = w.shape
    n = w.shape[axis]
    b = block if block and n % block == 0 else n
    blocks = w.reshape(rows // b, b, cols) if axis == 0 else w.reshape(rows, cols // b, b)  # (R/b,b,C) | (R,C/b,b)
    amax = np.abs(blocks).max(axis=1 if axis == 0 else 2, keepdims=True)
    scale = np.maximum(np.where(amax > 0, amax / 127.0, 1.0), FP16_MIN_NORMAL).astype(np.float16)
    q = np.clip(np.rint(blocks / scale.astype(np.float32)), -127, 127).astype(np.int8)
    return q, scale
