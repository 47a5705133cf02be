"""Pass: read an activation's QuantizeLinear -> DequantizeLinear pair as the clamp to its
integer range.

DequantizeLinear(QuantizeLinear(x, s, z), s, z) = s * (clamp(round(x / s) + z, qmin, qmax) - z).
With rounding read as the identity this is Clip(x, (qmin - z) s, (qmax - z) s): the
activation that onnxruntime's QDQ quantizer removed (a ReLU is the range starting at 0, a ReLU6
the one ending near 6) stays in the graph as a Clip, which passes relevance as any activation.
The only change to the function is the rounding: |difference| <= s / 2 per quantized tensor
(then propagated by the layers after it).

The pair on a model input is read as the identity instead: a Clip there would stop the
per-channel bounds of the z^B rule (ZBox, the default composite's first layer) from reaching
the first layer, and relevance passes a Clip unchanged anyway. The forward pass then differs
from the deployed model only for input values outside the input's quantization range (for the
README's models calibrated on N(0, 1) images about [-4.5, 4.7]; ImageNet-normalized images lie in
[-2.2, 2.7]), which the deployed model clamps.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..load import infer_shapes
from ._graph import constant_value, consumers, fresh_name, output_names, remove_unused_initializers
from .dequantize import INTEGER_RANGES, attribute


def _params(graph: onnx.GraphProto, node: onnx.NodeProto) -> Optional[Tuple[float, int, np.dtype]]:
    """(scale, zero point, integer dtype) of a per-tensor Q/DQ with constant parameters."""
    scale = constant_value(graph, node.input[1])
    zp = constant_value(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if scale is None or zp is None or scale.size != 1 or zp.size != 1 or attribute(node, "block_size", 0):
        return None
    if zp.dtype not in INTEGER_RANGES or attribute(node, "saturate", 1) != 1:
        return None
    return float(scale.reshape(())), int(zp.reshape(())), zp.dtype


def scalar_initializer(graph: onnx.GraphProto, value: float, dtype, hint: str) -> str:
    """A 0-d initializer (Clip's min and max must be scalars; add_initializer makes them 1-D)."""
    name = fresh_name(graph, hint)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name


def node_name(graph: onnx.GraphProto, hint: str) -> str:
    taken = {n.name for n in graph.node}
    name, k = hint, 0
    while name in taken:
        k += 1
        name = f"{hint}_{k}"
    return name


def clip_range(scale: float, zero_point: int, dtype) -> Tuple[float, float]:
    qmin, qmax = INTEGER_RANGES[np.dtype(dtype)]
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale


def _share(graph: onnx.GraphProto, first: onnx.NodeProto, others) -> None:
    """Make the readers of the other DequantizeLinear nodes read ``first``'s output."""
    for dq, _ in others:
        for node in graph.node:
            for slot, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[slot] = first.output[0]
        for out in graph.output:
            if out.name == dq.output[0]:
                graph.node.append(helper.make_node("Identity", [first.output[0]], [dq.output[0]],
                                                   name=node_name(graph, (dq.name or dq.output[0]) + "_same_clip")))


def qdq_to_clip(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers (run after the DequantizeLinear of constants are
    folded). Ensures every QuantizeLinear with constant per-tensor parameters whose every
    consumer is a DequantizeLinear with the same scale and zero point is gone: the pair becomes
    Clip(x, (qmin - z) s, (qmax - z) s) in the element type of x. Refuses (leaves the nodes) a
    per-channel activation quantization, differing parameters, or a quantized tensor read by
    anything other than a DequantizeLinear or written as a graph output."""
    graph = model.graph
    uses, outputs = consumers(graph), output_names(graph)
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    replaced = []
    for q in list(graph.node):
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or q.output[0] in outputs:
            continue
        params = _params(graph, q)
        readers = uses.get(q.output[0], [])
        if params is None or not readers:
            continue
        if not all(n.op_type == "DequantizeLinear" and slot == 0 and _params(graph, n) == params for n, slot in readers):
            continue
        first = readers[0][0]
        if q.input[0] in inputs:   # the model input: read as the identity (module docstring)
            graph.node.insert(list(graph.node).index(q), helper.make_node(
                "Identity", [q.input[0]], [first.output[0]], name=node_name(graph, (q.name or q.output[0]) + "_as_identity")))
            _share(graph, first, readers[1:])
            replaced.append(q)
            replaced.extend(dq for dq, _ in readers)
            continue
        scale_value = constant_value(graph, q.input[1])
        low, high = clip_range(*params)
        dtype = scale_value.dtype
        lo = scalar_initializer(graph, low, dtype, (q.name or q.output[0]) + "_clip_min")
        hi = scalar_initializer(graph, high, dtype, (q.name or q.output[0]) + "_clip_max")
        clip = helper.make_node("Clip", [q.input[0], lo, hi], [first.output[0]], name=node_name(graph, (q.name or q.output[0]) + "_as_clip"))
        graph.node.insert(list(graph.node).index(q), clip)
        _share(graph, first, readers[1:])
        replaced.append(q)
        replaced.extend(dq for dq, _ in readers)
    for node in replaced:
        graph.node.remove(node)
    if replaced:
        remove_unused_initializers(graph)
        infer_shapes(model)
    return bool(replaced)
