"""Pass: fold a chain of Mul/Div/Add/Sub by constants into the linear layer before it.

tf2onnx writes Keras' BatchNormalization after a Conv as Conv -> Mul(s) -> Add(t) (and other
exporters write a layer scale or a shift the same way). Left alone, the Add is read as a sum
and split like a residual connection; folded, it is the layer's bias. With y = layer(x) of C
output channels, each step of the chain is per channel y -> a * y + c:

    Mul(y, v) | Mul(v, y): a = v      Div(y, v): a = 1 / v      Add(y, v) | Add(v, y): c = v
    Sub(y, v): c = -v                 Sub(v, y): a = -1, c = v

and the chain composes to y' = s * y + t, folded as W' = s * W (per output channel), b' = s * b + t
into a Conv or canonical Gemm. Into a MatMul with a constant (K, C) weight s scales W's columns
and t stays one Add after it (``fuse_matmul_add`` makes a 2-D one a Gemm). Exact only where every
constant is a scalar or one value per output channel (it broadcasts along the channel axis and
adds no axis), every tensor of the chain has no other use, and the layer's parameters are
used by no other node; anything else stops the chain there (a Div by a constant with a zero
value too).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from ._graph import (add_initializer, constant_value, consumers, fresh_name, output_names, rank_of,
                     remove_unused_initializers)
from .gemm import is_canonical

_CHAIN_OPS = ("Mul", "Div", "Add", "Sub")


def _layer(graph, node) -> Optional[Tuple[int, int]]:
    """(channel axis, channels) of a Conv, canonical Gemm or constant-weight MatMul, else None."""
    weight = constant_value(graph, node.input[1]) if len(node.input) > 1 else None
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if weight is None or not np.issubdtype(weight.dtype, np.floating) or \
            (has_bias and constant_value(graph, node.input[2]) is None):
        return None
    if node.op_type == "Conv" or is_canonical(node):
        return 1, weight.shape[0]
    if node.op_type == "MatMul" and weight.ndim == 2:
        return -1, weight.shape[1]
    return None


def _per_channel(value: np.ndarray, rank: int, axis: int, channels: int) -> Optional[np.ndarray]:
    """``value`` as C per-channel numbers (float64) when it broadcasts along the channel axis
    of a rank-``rank`` tensor without adding an axis, else None."""
    if value.ndim > rank or not np.issubdtype(value.dtype, np.floating):
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    axis %= rank
    if any(size != 1 for i, size in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,))


def _step(node, slot: int, v: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(a, c) of the node's map y -> a * y + c, y its input at ``slot``; None if not affine."""
    one, zero = np.ones_like(v), np.zeros_like(v)
    if node.op_type == "Mul":
        return v, zero
    if node.op_type == "Add":
        return one, v
    if node.op_type == "Sub":
        return (one, -v) if slot == 0 else (-one, v)
    if slot == 0 and np.all(v != 0):   # Div(y, v); Div(v, y) is not affine
        return 1.0 / v, zero
    return None


def _chain(graph, uses, outputs, layer, axis, channels):
    """(s, t, nodes) of the affine chain after ``layer`` (nodes empty when there is none)."""
    rank = rank_of(graph, layer.output[0])
    s, t, nodes = np.ones(channels), np.zeros(channels), []
    tensor = layer.output[0]
    while rank is not None and tensor not in outputs and len(uses.get(tensor, [])) == 1:
        node, slot = uses[tensor][0]
        if node.op_type not in _CHAIN_OPS or len(node.input) != 2 or node.input[0] == node.input[1]:
            break
        value = constant_value(graph, node.input[1 - slot])
        v = None if value is None else _per_channel(value, rank, axis, channels)
        step = None if v is None else _step(node, slot, v)
        if step is None:
            break
        a, c = step
        s, t = a * s, a * t + c
        nodes.append(node)
        tensor = node.output[0]
    return s, t, nodes


def _unshared(graph, layer) -> bool:
    params = [name for name in layer.input[1:] if name]
    return all(sum(name == i for node in graph.node for i in node.input) == 1 for name in params)


def fold_affine(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers, shape inference (ranks) and canonical Gemms; runs
    before ``fuse_matmul_add``. Ensures the affine chain of the module doc after a Conv,
    canonical Gemm or constant-weight MatMul is part of the layer (a MatMul keeps one Add of a
    constant after it). Refuses a chain whose constant varies along another axis than the
    channels, a chain tensor with another use, or a layer whose parameters are shared."""
    graph = model.graph
    uses, outputs = consumers(graph), output_names(graph)
    removed: List[onnx.NodeProto] = []
    for layer in list(graph.node):
        found = _layer(graph, layer)
        if found is None or not _unshared(graph, layer):
            continue
        axis, channels = found
        s, t, nodes = _chain(graph, uses, outputs, layer, axis, channels)
        if not nodes or (layer.op_type == "MatMul" and [n.op_type for n in nodes] == ["Add"]):
            continue   # nothing to fold (a MatMul + Add is fuse_matmul_add's)
        weight = constant_value(graph, layer.input[1])
        dtype, out = weight.dtype, nodes[-1].output[0]
        if layer.op_type == "MatMul":
            layer.input[1] = add_initializer(graph, (weight * s).astype(dtype), layer.name + "_W_affine")
            if np.any(t != 0):
                hidden = fresh_name(graph, layer.output[0] + "_scaled")
                bias = add_initializer(graph, t.astype(dtype), layer.name + "_B_affine")
                graph.node.insert(list(graph.node).index(layer) + 1,
                                  helper.make_node("Add", [hidden, bias], [out], name=layer.name + "_affine_add"))
                out = hidden
        else:
            has_bias = len(layer.input) > 2 and bool(layer.input[2])
            bias = constant_value(graph, layer.input[2]).astype(np.float64) if has_bias else np.zeros(channels)
            per_channel = s.reshape((-1,) + (1,) * (weight.ndim - 1))
            layer.input[1] = add_initializer(graph, (weight * per_channel).astype(dtype), layer.name + "_W_affine")
            bias_name = add_initializer(graph, (bias * s + t).astype(dtype), layer.name + "_B_affine")
            if has_bias:
                layer.input[2] = bias_name
            else:
                layer.input.append(bias_name)
        layer.output[0] = out
        removed += nodes
    for node in removed:
        graph.node.remove(node)
    if removed:
        remove_unused_initializers(graph)
    return bool(removed)
