"""Extrema: GlobalMaxPool, ReduceMax/ReduceMin over non-batch axes and element-wise Max/Min,
winner-take-all.

Mode "winner" (the default composites): each output's relevance goes to the input element(s)
that equal it, R_in = R_out * [x = y] / (number of winners), split evenly among ties (where
MaxPool's Indices would pick one, a global maximum has no window order to break ties by); a
minimum is the same map with y the minimum (one function serves both, as [x = y] does not care
which extreme y is); an element-wise Max/Min with a constant operand (Max(x, c), Min(x, c))
leaves the constant's wins' relevance absorbed, like a bias. The ``gradient`` composites use the same map (the subgradient that
splits evenly among ties, as torch's amax). GlobalMaxPool in mode "avg" is read as
GlobalAveragePool, with that op's linear rule.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .gradient import vjp
from .linear import attributes
from .pooling import global_average_pool
from .propagate import implies_zeros
from .registry import register


def _reduced_axes(ctx, node):
    """The non-batch axes a GlobalMaxPool or ReduceMax/ReduceMin reduces, and whether it keeps them."""
    rank = len(ctx.graph.static_shape(node.input[0])) + 1
    if node.op_type == "GlobalMaxPool":
        return list(range(2, rank)), True
    attrs = attributes(node)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        constant = ctx.graph.constant(node.input[1])
        axes = None if constant is None else constant.reshape(-1).tolist()
    axes = sorted(int(a) % rank for a in axes) if axes else None
    if not axes or 0 in axes:
        raise ModelError(f"{node.op_type} {node.name!r} reduces the batch axis or axes computed at run time; lrp_onnx "
                         f"explains extrema over constant non-batch axes")
    return axes, bool(attrs.get("keepdims", 1))


def _winners(ctx, node, r_out):
    """R_in of a GlobalMaxPool or ReduceMax/ReduceMin (module doc)."""
    b = ctx.builder
    x, y = node.input[0], node.output[0]
    axes, keepdims = _reduced_axes(ctx, node)
    given = r_out
    if not keepdims:   # y and R_out with the reduced axes back as 1s, to compare with x
        sample = ctx.graph.static_shape(x)
        kept = b.const([-1] + [1 if i + 1 in axes else d for i, d in enumerate(sample)], "max_keepdims", np.int64)
        y, r_out = (b.op("Reshape", [t, kept], "max_kept") for t in (y, r_out))
    winners = b.op("Cast", [b.op("Equal", [x, y], "max_is_max")], "max_mask", to=1)
    count = b.reduce("ReduceSum", winners, axes, hint="max_count")
    r_in = b.op("Mul", [winners, b.op("Div", [r_out, count], "max_share")], "r_max")
    implies_zeros(ctx, r_in, x, given, node.output[0])
    return [(x, r_in)]


def _elementwise(ctx, node, r_out):
    """R_i of Max(x_1, x_2, ...) or Min(...): the share of R_out of each input equal to the output."""
    b, y = ctx.builder, node.output[0]
    masks = {name: b.op("Cast", [b.op("Equal", [name, y], "max_is_max")], "max_mask", to=1) for name in node.input}
    count = b.op("Sum", list(masks.values()), "max_count") if len(masks) > 1 else next(iter(masks.values()))
    share = b.op("Div", [r_out, count], "max_share")
    return [(name, ctx.unbroadcast(b.op("Mul", [mask, share], "r_max"), y, name)) for name, mask in masks.items()
            if ctx.carries(name)]


@register("GlobalMaxPool", family="maxpool", data_slots=(0,))
def global_max_pool(ctx, node, rule, relevance):
    if ctx.maxpool == "avg":
        return global_average_pool(ctx, node, rule, relevance)
    return _winners(ctx, node, relevance[node.output[0]])


@register("ReduceMax", "ReduceMin", family="maxpool", data_slots=(0,))
def reduce_extreme(ctx, node, rule, relevance):
    return _winners(ctx, node, relevance[node.output[0]])


@register("Max", "Min", family="activation")
def elementwise_extreme(ctx, node, rule, relevance):
    return _elementwise(ctx, node, relevance[node.output[0]])


@vjp("GlobalMaxPool", "ReduceMax", "ReduceMin")
def winners_vjp(ctx, node, g_out):
    return _winners(ctx, node, g_out)


@vjp("Max", "Min")
def elementwise_extreme_vjp(ctx, node, g_out):
    return _elementwise(ctx, node, g_out)
