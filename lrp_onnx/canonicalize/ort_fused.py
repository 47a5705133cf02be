"""Pass: undo the com.microsoft fusions that onnxruntime writes into a model saved at
ORT_ENABLE_EXTENDED (SessionOptions.optimized_model_filepath), so the handlers see ONNX ops.

- FusedConv(X, W, B, [Z]; activation, activation_params) = act(Conv(X, W, B) [+ Z]): Conv,
  an Add of Z, then the activation: Relu, Clip(min, max), LeakyRelu(alpha), Sigmoid, Tanh,
  HardSigmoid(alpha, beta) (the activations of onnxruntime's MLAS kernels).
- FusedGemm(A, B, C; alpha, beta, transA, transB, activation, activation_alpha/beta) =
  act(Gemm(...)): Gemm, then Relu, LeakyRelu(activation_alpha), Sigmoid, Tanh or
  HardSigmoid(activation_alpha, activation_beta).
- FusedMatMul(A, B; alpha, transA=0, transB) with a constant B (no batch transposes): MatMul by
  the constant alpha * B (transposed when transB).

Exact: the same arithmetic as the fused kernel. Not undone (left to the handlers' refusal,
which names the com.microsoft domain): the transformer fusions (Gelu, BiasGelu, FastGelu,
QuickGelu, SkipLayerNormalization, Attention, ...) and the NCHWc layout (com.microsoft.nchwc,
written at ORT_ENABLE_ALL), which checks.py refuses with what to do.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import onnx
from onnx import helper

from ..load import infer_shapes
from ._graph import add_initializer, constant_value, fresh_name
from .dequantize import attribute
from .qdq_clip import node_name, scalar_initializer

_MS = "com.microsoft"
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _activation(graph, name: str, params: List[float], x: str, y: str, hint: str) -> Optional[List[onnx.NodeProto]]:
    """The ONNX node(s) computing activation ``name`` from x into y, or None if unknown."""
    if name in ("", "Identity"):
        return [helper.make_node("Identity", [x], [y], name=hint)]
    if name in ("Relu", "Sigmoid", "Tanh"):
        return [helper.make_node(name, [x], [y], name=hint)]
    if name == "LeakyRelu":
        return [helper.make_node(name, [x], [y], name=hint, alpha=float(params[0]) if params else 0.01)]
    if name == "HardSigmoid":
        alpha, beta = (list(params) + [0.2, 0.5][len(params):])[:2]
        return [helper.make_node(name, [x], [y], name=hint, alpha=float(alpha), beta=float(beta))]
    if name == "Clip" and len(params) == 2:
        low = scalar_initializer(graph, params[0], np.float32, hint + "_min")
        high = scalar_initializer(graph, params[1], np.float32, hint + "_max")
        return [helper.make_node("Clip", [x, low, high], [y], name=hint)]
    return None


def _fused_conv(graph, node) -> Optional[List[onnx.NodeProto]]:
    act = _text(attribute(node, "activation", ""))
    params = list(attribute(node, "activation_params", []) or [])
    hint = node.name or node.output[0]
    conv_out = fresh_name(graph, node.output[0] + "_conv")
    activation = _activation(graph, act, params, conv_out, node.output[0], node_name(graph, hint + "_" + (act or "identity")))
    if activation is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in _CONV_ATTRS}
    conv = helper.make_node("Conv", list(node.input[:3]), [conv_out], name=hint, **attrs)
    nodes = [conv]
    if len(node.input) > 3 and node.input[3]:
        summed = fresh_name(graph, node.output[0] + "_sum")
        nodes.append(helper.make_node("Add", [conv_out, node.input[3]], [summed], name=node_name(graph, hint + "_sum")))
        activation[-1].input[0] = summed
    return nodes + activation


def _fused_gemm(graph, node) -> Optional[List[onnx.NodeProto]]:
    act = _text(attribute(node, "activation", ""))
    if act == "Clip":
        return None
    params = [attribute(node, "activation_alpha", None), attribute(node, "activation_beta", None)]
    params = [p for p in params if p is not None]
    hint = node.name or node.output[0]
    gemm_out = fresh_name(graph, node.output[0] + "_gemm")
    activation = _activation(graph, act, params, gemm_out, node.output[0], node_name(graph, hint + "_" + (act or "identity")))
    if activation is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("alpha", "beta", "transA", "transB")}
    return [helper.make_node("Gemm", list(node.input), [gemm_out], name=hint, **attrs)] + activation


def _fused_matmul(graph, node) -> Optional[List[onnx.NodeProto]]:
    weight = constant_value(graph, node.input[1])
    if (weight is None or weight.ndim != 2 or attribute(node, "transA", 0) or attribute(node, "transBatchA", 0)
            or attribute(node, "transBatchB", 0)):
        return None
    weight = weight.T if attribute(node, "transB", 0) else weight
    weight = (weight * np.asarray(attribute(node, "alpha", 1.0), weight.dtype)).astype(weight.dtype)
    name = add_initializer(graph, weight, (node.name or node.output[0]) + "_W")
    return [helper.make_node("MatMul", [node.input[0], name], [node.output[0]], name=node.name or node.output[0])]


_UNFUSE = {"FusedConv": _fused_conv, "FusedGemm": _fused_gemm, "FusedMatMul": _fused_matmul}


def unfuse_ort_contrib(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers and named nodes. Ensures no com.microsoft FusedConv,
    FusedGemm or FusedMatMul of the forms in the module docstring remains (each is replaced in
    place by the ONNX ops it fuses). Refuses (leaves the node) an activation it does not know,
    FusedGemm with Clip, and FusedMatMul with a non-constant or batched B or transposed A."""
    graph = model.graph
    rebuilt, changed = [], False
    for node in graph.node:
        unfuse = _UNFUSE.get(node.op_type) if node.domain == _MS else None
        nodes = unfuse(graph, node) if unfuse else None
        if nodes is None:
            rebuilt.append(node)
            continue
        rebuilt.extend(nodes)
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(rebuilt)
        infer_shapes(model)   # the ranks of the new tensors, for the passes after it
    return changed
