"""Selections by index or condition, and broadcasts: Gather, GatherElements, GatherND (the
class-token pick x[:, 0], packed Q/K/V picks), Where and Expand (masks). Each output element
is one input element, so its relevance goes back to exactly that element:

- Gather*: R_data = scatter-add of R onto the elements picked (an element picked twice gets
  both shares); the indices are integers and get none. Which elements were picked is found by
  running the same gather on the flat element index of the whole data tensor, so every index
  form (negative, batched, per sample) and every axis means exactly what it means to ONNX
  (torch's packed attention picks Q, K, V along axis 0 of a (3, T, N, E) tensor, whose batch
  axis is not the first).
- Gather from a constant table (an embedding lookup, family "embedding", ops/families.py): a
  relevance sink. Its data is a constant, so it is never on the relevance path; the explainer
  reads the token relevance at its output (inputs.py: the lookup's output is a source).
- Where(c, X, Y): R_X = R where c, R_Y = R where not c (each summed back over the axes it was
  broadcast along); the condition gets none.
- Expand(x, shape): R_x = R summed over the expanded axes.

These are linear selections, so the same nodes are their vector-Jacobian products
(ops/gradient.py).
"""
from __future__ import annotations

import numpy as np

from .linear import attributes
from .registry import register
from .slicing import flat_index


@register("Gather", "GatherElements", "GatherND", family="shape", data_slots=(0,))
def gather_back(ctx, node, rule, relevance):
    """Scatter-add R back onto the picked elements of the data (module doc)."""
    data = node.input[0]
    attrs = attributes(node)
    b = ctx.builder
    flat = b.const([-1], "flat", np.int64)
    picked = b.op(node.op_type, [flat_index(ctx, data), node.input[1]], "picked", **attrs)
    zeros = b.op("Reshape", [ctx.zeros_like(data), flat], "zeros_flat")
    scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [picked, flat], "picked_flat"),
                                         b.op("Reshape", [relevance[node.output[0]], flat], "r_flat")],
                     "r_gather", axis=0, reduction="add")
    return [(data, b.op("Reshape", [scattered, ctx.shape_of(data)], "r_gather"))]


@register("Where", family="select", data_slots=(1, 2))
def where_back(ctx, node, rule, relevance):
    """R_X = Where(c, R, 0), R_Y = Where(c, 0, R), unbroadcast; none to the condition c."""
    b = ctx.builder
    condition, y = node.input[0], node.output[0]
    r = relevance[y]
    zero = b.const(0.0)
    result = []
    for tensor, picked in ((node.input[1], [r, zero]), (node.input[2], [zero, r])):
        if ctx.carries(tensor):
            result.append((tensor, ctx.unbroadcast(b.op("Where", [condition] + picked, "r_where"), y, tensor)))
    return result


@register("Expand", family="shape", data_slots=(0,))
def expand_back(ctx, node, rule, relevance):
    """R_x = R summed over the axes Expand added or stretched from 1."""
    return [(node.input[0], ctx.unbroadcast(relevance[node.output[0]], node.output[0], node.input[0]))]
