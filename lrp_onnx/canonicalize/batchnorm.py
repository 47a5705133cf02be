"""Pass: fold an inference BatchNormalization into the Conv or Gemm before it."""
import numpy as np
import onnx
from onnx import helper

from .gemm import is_canonical
from ._graph import add_initializer, constant_value, consumers, output_names, producers, remove_unused_initializers


def _param_uses(graph, name):
    return sum(1 for node in graph.node for i in node.input if i == name)


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
        params = [constant_value(graph, name) for name in bn.input[1:5]]
        weight = constant_value(graph, layer.input[1])
        has_bias = len(layer.input) > 2 and bool(layer.input[2])
        bias = constant_value(graph, layer.input[2]) if has_bias else None
        if weight is None or any(p is None for p in params) or (has_bias and bias is None):
            continue
        if _param_uses(graph, layer.input[1]) > 1 or (has_bias and _param_uses(graph, layer.input[2]) > 1):
            continue  # a shared weight would change the other user too
        eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        factor = scale / np.sqrt(var + eps)
        new_weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))   # axis 0: output channels
        old_bias = bias.astype(np.float64) if bias is not None else np.zeros_like(factor)
        new_bias = (old_bias - mean) * factor + shift
        dtype = weight.dtype
        layer.input[1] = add_initializer(graph, new_weight.astype(dtype), layer.name + "_W_bn")
        new_bias_name = add_initializer(graph, new_bias.astype(dtype), layer.name + "_B_bn")
        if has_bias:
            layer.input[2] = new_bias_name
        else:
            layer.input.append(new_bias_name)
        layer.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        graph.node.remove(bn)
    if folded:
        remove_unused_initializers(graph)
    return bool(folded)
