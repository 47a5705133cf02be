"""Pass: fold a DequantizeLinear of constants (a quantized weight or bias) into a float constant,
so that the rules see the weights the quantized network computes with.

DequantizeLinear(x, scale, zero_point, axis) = (x - zero_point) * scale, with scale and
zero_point scalars (per tensor) or 1-D along ``axis`` (per channel). The fold is exact: the
float32 product of two exactly representable numbers is what onnxruntime computes too.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper

from ._graph import constant_value, output_names, remove_unused_initializers

#: (qmin, qmax) of the integer types a QuantizeLinear can write (saturating).
INTEGER_RANGES = {
    np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int32): (-2 ** 31, 2 ** 31 - 1),
}


def attribute(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def per_axis(value: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """``value`` (a scalar, or 1-D along ``axis``) shaped to broadcast against a rank-``rank``
    tensor, as DequantizeLinear/QuantizeLinear read their scale and zero point."""
    if value.size == 1 and value.ndim <= 1:
        return value.reshape(())
    if value.ndim != 1:
        raise ValueError("only per-tensor and per-axis (1-D) quantization parameters are read")
    shape = [1] * rank
    shape[axis % rank] = value.size
    return value.reshape(shape)


def dequantize_array(x: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray], axis: int = 1) -> np.ndarray:
    """(x - zero_point) * scale in the dtype of ``scale`` (as DequantizeLinear computes it)."""
    s = per_axis(scale, x.ndim, axis)
    zp = np.zeros((), np.int64) if zero_point is None else per_axis(zero_point, x.ndim, axis).astype(np.int64)
    return ((x.astype(np.int64) - zp).astype(np.float64) * s.astype(np.float64)).astype(scale.dtype)


def constant_dequantize(graph: onnx.GraphProto, node: onnx.NodeProto) -> Optional[np.ndarray]:
    """The value of a DequantizeLinear whose inputs are all constants, else None (also for the
    blocked quantization of opset 21, ``block_size``, which is left to onnxruntime)."""
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or attribute(node, "block_size", 0):
        return None
    x, scale = constant_value(graph, node.input[0]), constant_value(graph, node.input[1])
    zp = constant_value(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if x is None or scale is None or (len(node.input) > 2 and node.input[2] and zp is None):
        return None
    try:
        return dequantize_array(x, scale, zp, attribute(node, "axis", 1))
    except ValueError:
        return None


def fold_dequantize_constants(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers. Ensures no DequantizeLinear of constants (per tensor
    or per axis) remains, except one that writes a graph output: each becomes an initializer
    holding (x - zero_point) * scale."""
    graph = model.graph
    outputs = output_names(graph)
    folded = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        value = constant_dequantize(graph, node)
        if value is None:
            continue
        graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(value), node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    if folded:
        remove_unused_initializers(graph)
    return bool(folded)
