"""ReduceMean and ReduceSum over non-batch axes: linear maps with fixed weights (1/n or 1),
so they take a rule like average pooling (DESIGN.md section 4; the overview, section 10.2.2)."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .linear import attributes
from .propagate import LinearLayer, propagate_linear
from .registry import register


def reduced_axes(ctx, node):
    """The reduced axes (attribute, or constant input from opset 18 / ReduceSum 13), as
    non-negative ints; the batch axis may not be among them."""
    rank = len(ctx.graph.shape(node.input[0]))
    attrs = attributes(node)
    if "axes" in attrs:
        axes = attrs["axes"]
    elif len(node.input) > 1 and node.input[1]:
        axes = ctx.graph.constant(node.input[1])
        if axes is None:
            raise ModelError(f"{node.op_type} {node.name!r} takes its axes from a computed tensor; lrp_onnx needs constant axes")
        axes = axes.tolist()
    else:
        axes = [] if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted(int(a) % rank for a in axes)
    if 0 in axes:
        raise ModelError(f"{node.op_type} {node.name!r} reduces over the batch axis; relevance is explained per sample")
    return axes


@register("ReduceMean", "ReduceSum", family="avgpool", data_slots=(0,))
def reduce_linear(ctx, node, rule, relevance):
    """z = sum (or mean) over the axes; f^T(s) = s (or s/n) broadcast back over them.

    The rule sees the reduction with keepdims=1 (R reshaped to the kept shape), so z has the
    input's rank, as propagate_linear's per-sample statistics (relative epsilon) expect. No
    axes (noop_with_empty_axes=1) is the identity map."""
    b = ctx.builder
    axes = reduced_axes(ctx, node)
    keepdims = attributes(node).get("keepdims", 1)
    in_shape = ctx.graph.static_shape(node.input[0])
    count = int(np.prod([in_shape[a - 1] for a in axes])) if axes else 1
    kept_shape = b.const([0] + [1 if i in axes else d for i, d in enumerate(in_shape, start=1)], "kept_shape", np.int64)
    factor = b.const(1.0 / count if node.op_type == "ReduceMean" else 1.0)

    def forward(x, w, c):
        if not axes:
            return x
        return b.reduce(node.op_type, x, axes, keepdims=1, hint="z_reduce")

    def transpose(s, w):
        return b.op("Expand", [b.op("Mul", [s, factor], "s_reduce"), ctx.shape_of(node.input[0])], "c_reduce")

    r = relevance[node.output[0]]
    if not keepdims:
        r = b.op("Reshape", [r, kept_shape], "r_kept")
    layer = LinearLayer(node.name, node.input[0], node.output[0], forward, transpose, reuse_output=bool(keepdims))
    return [(node.input[0], propagate_linear(ctx, layer, rule, r))]
