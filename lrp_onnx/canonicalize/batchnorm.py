"""Passes: fold an inference BatchNormalization into the Conv or Gemm before it, or, where
there is none, into the Conv or Gemm after it.

A BatchNormalization is the per-channel affine map y = s * x + t with s = scale / sqrt(var + eps)
and t = B - mean * s. Folded backwards it scales the layer's output channels; folded forwards
it scales the next layer's input channels and its shift becomes a bias, which is exact only
when the next layer sees every shifted value: a Gemm, or a Conv without padding (zero padding
of the normalized tensor is not zero padding of the raw one) and without groups.
"""
import numpy as np
import onnx
from onnx import helper

from .gemm import is_canonical
from ._graph import add_initializer, constant_value, consumers, output_names, producers, remove_unused_initializers


def _param_uses(graph, name):
    return sum(1 for node in graph.node for i in node.input if i == name)


def _affine(graph, bn):
    """(s, t) of y = s * x + t per channel (float64), or None without constant statistics."""
    params = [constant_value(graph, name) for name in bn.input[1:5]]
    if any(p is None for p in params) or len([o for o in bn.output if o]) != 1:
        return None
    eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale, shift, mean, var = (p.astype(np.float64) for p in params)
    factor = scale / np.sqrt(var + eps)
    return factor, shift - mean * factor


def _layer_parameters(graph, layer):
    """(W, b, dtype) of a Conv/Gemm, W and b as float64 (b zeros when absent), or None when
    either is not a constant or is shared with another node (changing it would change that
    node too)."""
    weight = constant_value(graph, layer.input[1])
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    bias = constant_value(graph, layer.input[2]) if has_bias else None
    if weight is None or (has_bias and bias is None):
        return None
    if _param_uses(graph, layer.input[1]) > 1 or (has_bias and _param_uses(graph, layer.input[2]) > 1):
        return None
    return weight.astype(np.float64), (bias.astype(np.float64) if has_bias else np.zeros(weight.shape[0])), weight.dtype


def _fold_values(graph, bn, layer):
    """(s, t, W, b, dtype) for folding ``bn`` into ``layer``, or None when it cannot be."""
    affine, params = _affine(graph, bn), _layer_parameters(graph, layer)
    return None if affine is None or params is None else affine + params


def _set_parameters(graph, layer, weight, bias, dtype):
    layer.input[1] = add_initializer(graph, weight.astype(dtype), layer.name + "_W_bn")
    bias_name = add_initializer(graph, bias.astype(dtype), layer.name + "_B_bn")
    if len(layer.input) > 2 and layer.input[2]:
        layer.input[2] = bias_name
    else:
        layer.input.append(bias_name)


def fold_batchnorm(model: onnx.ModelProto) -> bool:
    """Requires canonical Gemms (W of shape (N, K)) and constants as initializers. Ensures a
    BatchNormalization whose input comes from a Conv/Gemm with constant weights, used by nothing
    else, is folded into that node: W' = W * s, b' = (b - mean) * s + beta, s = scale/sqrt(var+eps)
    (per output channel). Refuses (leaves both nodes) when the producer's output has another
    consumer or its weight or bias initializer is shared with another node."""
    graph = model.graph
    uses, made_by, outputs = consumers(graph), producers(graph), output_names(graph)
    folded = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        layer = made_by.get(bn.input[0])
        if layer is None or not (layer.op_type == "Conv" or is_canonical(layer)):
            continue
        if len(uses[layer.output[0]]) != 1 or layer.output[0] in outputs:
            continue
        values = _fold_values(graph, bn, layer)
        if values is None:
            continue
        factor, shift, weight, bias, dtype = values
        new_weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))   # axis 0: output channels
        _set_parameters(graph, layer, new_weight, bias * factor + shift, dtype)
        layer.output[0] = bn.output[0]
        folded.append(bn)
    return _remove(graph, folded)


def _remove(graph, folded) -> bool:
    for bn in folded:
        graph.node.remove(bn)
    if folded:
        remove_unused_initializers(graph)
    return bool(folded)


def _unpadded_plain_conv(node) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return (node.op_type == "Conv" and attrs.get("group", 1) == 1 and not any(attrs.get("pads", []))
            and auto_pad in ("NOTSET", "VALID"))


def fold_batchnorm_forward(model: onnx.ModelProto) -> bool:
    """Requires canonical Gemms and constants as initializers; runs after ``fold_batchnorm``.
    Ensures a BatchNormalization whose only consumer is a canonical Gemm or an unpadded,
    ungrouped Conv with unshared constant parameters is folded into it (its input x is read
    directly): W' = W * s over the input channels, b' = b + sum over inputs and kernel of W * t.
    Refuses when its output is used elsewhere or is a graph output, or the Conv pads."""
    graph = model.graph
    uses, outputs = consumers(graph), output_names(graph)
    folded = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or bn.output[0] in outputs or len(uses[bn.output[0]]) != 1:
            continue
        layer, slot = uses[bn.output[0]][0]
        if slot != 0 or not (is_canonical(layer) or _unpadded_plain_conv(layer)):
            continue
        values = _fold_values(graph, bn, layer)
        if values is None or values[2].shape[1] != values[0].shape[0]:
            continue
        factor, shift, weight, bias, dtype = values
        per_input = (1, -1) + (1,) * (weight.ndim - 2)   # axis 1: input channels (Gemm's K, Conv's C)
        new_bias = bias + (weight * shift.reshape(per_input)).reshape(weight.shape[0], -1).sum(axis=1)
        _set_parameters(graph, layer, weight * factor.reshape(per_input), new_bias, dtype)
        layer.input[0] = bn.input[0]
        folded.append(bn)
    return _remove(graph, folded)
