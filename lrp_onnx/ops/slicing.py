"""Ops that select part of a tensor: Split, Slice, Pad. Each output element is one input
element (or a pad constant), so relevance goes back to exactly that element; padding gets none."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .linear import attributes
from .registry import register


@register("Split", family="shape", data_slots=(0,))
def split_back(ctx, node, rule, relevance):
    """R_in = Concat of the outputs' relevance along the split axis (zeros for an unused part)."""
    rank = len(ctx.graph.shape(node.input[0]))
    axis = attributes(node).get("axis", 0) % rank
    if axis == 0:
        raise ModelError(f"Split {node.name!r} splits the batch axis; relevance is explained per sample")
    parts = [relevance.get(out) or ctx.zeros_like(out) for out in node.output]
    return [(node.input[0], ctx.builder.op("Concat", parts, "r_split", axis=axis))]


@register("Slice", family="shape", data_slots=(0,))
def slice_back(ctx, node, rule, relevance):
    """Scatter R back to the elements the Slice picked. Which ones is found by running the same
    Slice (same starts/ends/axes/steps tensors) on the flat index of one sample, so negative,
    clamped and strided bounds mean exactly what they mean to ONNX."""
    b = ctx.builder
    sample = ctx.graph.static_shape(node.input[0])
    axes = ctx.graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    rank = len(sample) + 1
    if axes is None and len(node.input) > 3 and node.input[3]:
        raise ModelError(f"Slice {node.name!r} takes its axes from a computed tensor; lrp_onnx needs constant axes")
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes.tolist()]
    if 0 in axes:
        raise ModelError(f"Slice {node.name!r} slices the batch axis; relevance is explained per sample")
    index = b.const(np.arange(int(np.prod(sample)), dtype=np.int64).reshape((1,) + sample), "slice_index", np.int64)
    picked = b.op("Slice", [index] + list(node.input[1:]), "slice_picked")
    flat = b.const([0, -1], "flat_sample", np.int64)
    r = b.op("Reshape", [relevance[node.output[0]], flat], "r_flat")
    where = b.op("Expand", [b.op("Reshape", [picked, b.const([1, -1], "one_row", np.int64)], "picked_flat"),
                            b.op("Shape", [r], "r_flat_shape")], "picked_rows")
    zeros = b.op("Reshape", [ctx.zeros_like(node.input[0]), flat], "zeros_flat")
    scattered = b.op("ScatterElements", [zeros, where, r], "r_slice", axis=1)
    return [(node.input[0], b.op("Reshape", [scattered, ctx.shape_of(node.input[0])], "r_slice"))]


@register("Pad", family="shape", data_slots=(0,))
def pad_back(ctx, node, rule, relevance):
    """Constant-mode padding: R_in is R with the padded border cut off (the pad values are
    constants and keep their relevance, like a bias)."""
    mode = attributes(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = ctx.graph.constant(node.input[1]) if len(node.input) > 1 else None
    if mode != "constant" or pads is None:
        raise ModelError(f"Pad {node.name!r} ({mode} mode{'' if pads is not None else ', computed pads'}): lrp_onnx "
                         f"supports constant padding with constant pads, where each output element is an input or the pad value")
    rank = len(ctx.graph.shape(node.input[0]))
    axes = ctx.graph.constant(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else list(range(rank))
    begin, end = pads[:len(axes)].tolist(), pads[len(axes):].tolist()
    if min(begin + end) < 0:
        raise ModelError(f"Pad {node.name!r} has negative pads (cropping); not supported")
    b = ctx.builder
    starts = [int(p) for p in begin]
    ends = [-int(q) if q > 0 else np.iinfo(np.int64).max for q in end]   # [p : -q] on each axis
    r = b.op("Slice", [relevance[node.output[0]], b.const(starts, "starts", np.int64), b.const(ends, "ends", np.int64),
                       b.const([int(a) for a in axes], "axes", np.int64)], "r_pad")
    return [(node.input[0], r)]
