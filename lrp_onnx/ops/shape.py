"""Shape operations: relevance takes the inverse shape operation."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import ModelError
from .linear import attributes
from .registry import register


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze", family="shape", data_slots=(0,))
def reshape_back(ctx, node, rule, relevance):
    """R_in = Reshape(R, Shape(input)): these ops only re-index the elements."""
    r = ctx.builder.op("Reshape", [relevance[node.output[0]], ctx.shape_of(node.input[0])], "r_reshape")
    return [(node.input[0], r)]


@register("Transpose", family="shape", data_slots=(0,))
def transpose_back(ctx, node, rule, relevance):
    """R_in = Transpose(R, perm^-1)."""
    rank = len(ctx.graph.shape(node.input[0]))
    perm = attributes(node).get("perm", list(range(rank))[::-1])
    inverse = [int(i) for i in np.argsort(perm)]
    return [(node.input[0], ctx.builder.op("Transpose", [relevance[node.output[0]]], "r_transpose", perm=inverse))]


@register("Shape", "Size", family="shape", data_slots=())
def shape_only(ctx, node, rule, relevance):
    """Shape and Size read only the dimensions of their input: no relevance flows through them
    (with no data slot they are never on the relevance path; the handler is never called)."""
    raise AssertionError(f"{node.op_type} carries no relevance")


@register("Cast", family="shape", data_slots=(0,))
def cast_back(ctx, node, rule, relevance):
    """A float32 -> float32 Cast (exporters emit them) is the identity: R_in = R_out. A cast to
    another type on the relevance path cannot carry relevance back."""
    if attributes(node).get("to") != onnx.TensorProto.FLOAT or ctx.graph.elem_types.get(node.input[0]) != onnx.TensorProto.FLOAT:
        raise ModelError(f"Cast {node.name!r} changes the element type on the relevance path; only float32 -> float32 passes relevance")
    return [(node.input[0], relevance[node.output[0]])]
