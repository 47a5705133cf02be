"""Ops that select part of a tensor: Split, Slice, Pad. Each output element is one input
element (or a pad constant), so relevance goes back to exactly that element; padding gets none."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .linear import attributes
from .registry import register


@register("Split", family="shape", data_slots=(0,))
def split_back(ctx, node, rule, relevance):
    """R_in = Concat of the outputs' relevance along the split axis (zeros for an unused part);
    any axis, as Gather's (axis 0 of a packed (3, N, ...) Q/K/V tensor is not the batch axis)."""
    rank = len(ctx.graph.shape(node.input[0]))
    axis = attributes(node).get("axis", 0) % rank
    parts = [relevance.get(out) or ctx.zeros_like(out) for out in node.output]
    return [(node.input[0], ctx.builder.op("Concat", parts, "r_split", axis=axis))]


@register("Slice", family="shape", data_slots=(0,))
def slice_back(ctx, node, rule, relevance):
    """Scatter R back to the elements the Slice picked. Which ones is found by running the same
    Slice (same starts/ends/axes/steps tensors) on the flat element index of the input, built at
    run time from its shape (flat_index), so negative, clamped and strided bounds mean
    exactly what they mean to ONNX, at every size (a dynamic sequence axis: RoPE's rotate_half)."""
    b, x = ctx.builder, node.input[0]
    rank = len(ctx.graph.shape(x))
    axes = ctx.graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if axes is None and len(node.input) > 3 and node.input[3]:
        raise ModelError(f"Slice {node.name!r} takes its axes from a computed tensor; lrp_onnx needs constant axes")
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes.tolist()]
    if 0 in axes:
        raise ModelError(f"Slice {node.name!r} slices the batch axis; relevance is explained per sample")
    flat = b.const([-1], "flat", np.int64)
    picked = b.op("Slice", [flat_index(ctx, x)] + list(node.input[1:]), "slice_picked")
    zeros = b.op("Reshape", [ctx.zeros_like(x), flat], "zeros_flat")
    scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [picked, flat], "picked_flat"),
                                         b.op("Reshape", [relevance[node.output[0]], flat], "r_flat")],
                     "r_slice", axis=0)
    return [(x, b.op("Reshape", [scattered, ctx.shape_of(x)], "r_slice"))]


def flat_index(ctx, x: str) -> str:
    """The int64 tensor shaped like ``x`` whose elements are their own flat index (built at run time)."""
    b = ctx.builder
    flat = b.op("Range", [b.const(0, "zero", np.int64), b.op("Size", [x], "size"), b.const(1, "one", np.int64)], "flat_index")
    return b.op("Reshape", [flat, ctx.shape_of(x)], "index")


@register("Pad", family="shape", data_slots=(0,))
def pad_back(ctx, node, rule, relevance):
    """Constant mode: R_in is R with the padded border cut off (the pad values are constants and
    keep their relevance, like a bias). Reflect, edge and wrap modes: every output element is a
    copy of one input element, y = P x with P a 0/1 selection, so R_in = P^T R: each copy's
    relevance is added back onto the element it copies (scatter-add); which element that is is
    found by running the same Pad on the flat index of x. Both are the op's VJP too."""
    mode = attributes(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = ctx.graph.constant(node.input[1]) if len(node.input) > 1 else None
    if mode not in ("constant", "reflect", "edge", "wrap") or pads is None:
        raise ModelError(f"Pad {node.name!r} ({mode} mode{'' if pads is not None else ', computed pads'}): lrp_onnx "
                         f"supports constant, reflect, edge and wrap padding with constant pads, where each output "
                         f"element is an input element or the pad value")
    rank = len(ctx.graph.shape(node.input[0]))
    axes = ctx.graph.constant(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else list(range(rank))
    axes = [int(a) % rank for a in axes]
    begin, end = pads[:len(axes)].tolist(), pads[len(axes):].tolist()
    if min(begin + end) < 0:
        raise ModelError(f"Pad {node.name!r} has negative pads (cropping); not supported")
    b, x, r_out = ctx.builder, node.input[0], relevance[node.output[0]]
    if mode != "constant":
        if any(p or q for a, p, q in zip(axes, begin, end) if a == 0):
            raise ModelError(f"Pad {node.name!r} pads the batch axis in {mode} mode (copying across samples); "
                             f"relevance is explained per sample")
        flat = b.const([-1], "flat", np.int64)
        axes_input = ["", node.input[3]] if len(node.input) > 3 and node.input[3] else []   # no float pad value
        copied = b.op("Pad", [flat_index(ctx, x), node.input[1]] + axes_input, "pad_copied", mode=mode)
        zeros = b.op("Reshape", [ctx.zeros_like(x), flat], "zeros_flat")
        scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [copied, flat], "pad_copied_flat"),
                                             b.op("Reshape", [r_out, flat], "r_flat")], "r_pad", axis=0, reduction="add")
        return [(x, b.op("Reshape", [scattered, ctx.shape_of(x)], "r_pad"))]
    starts = [int(p) for p in begin]
    ends = [-int(q) if q > 0 else np.iinfo(np.int64).max for q in end]   # [p : -q] on each axis
    r = b.op("Slice", [r_out, b.const(starts, "starts", np.int64), b.const(ends, "ends", np.int64),
                       b.const(axes, "axes", np.int64)], "r_pad")
    return [(x, r)]
