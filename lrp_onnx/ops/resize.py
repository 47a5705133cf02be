"""Resize (nearest and linear upsampling or downsampling of H and W): a linear layer.

Nearest and (bi)linear interpolation are linear in the input with fixed non-negative weights,
y = A_h x A_w^T per channel, so Resize takes a rule's four steps like pooling (family
"avgpool"; parameter modifiers do not apply): z = Resize(a), c = f^T(s) = A_h^T s A_w. The
per-axis matrices A (out x in) are read off ONNX's own Resize, run in the explainer on the unit
vectors of each axis (an identity of the axis' length, from Shape at run time) with the node's
attributes and that axis' entry of its scales or sizes, so every coordinate transformation and
rounding mode means what it means to onnxruntime, and scales or sizes computed at run time
(torch's ``interpolate(size=y.shape[-2:])``: Shape -> Slice -> Concat) and dynamic H and W work
as constant ones do. Cubic (negative weights), antialiasing, crop-and-resize, a
keep_aspect_ratio_policy other than "stretch" and resizing of the batch or channel axes are
refused: constant scales and sizes are read; computed ones are refused when shape inference
knows the output's channel axis and it differs, and otherwise guarded at run time (A_h^T s A_w
is reshaped to the input's shape, which fails for a run that resized the batch or channels).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import ModelError
from .gradient import vjp
from .linear import attributes
from .propagate import LinearLayer, propagate_linear
from .registry import register


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _input(node, slot: int):
    return node.input[slot] if len(node.input) > slot and node.input[slot] else None


def _check(ctx, node) -> None:
    """ModelError naming what a Resize node has that lrp_onnx does not explain (module doc)."""
    attrs = attributes(node)
    mode = _text(attrs.get("mode", "nearest"))
    problems = []
    if mode not in ("nearest", "linear"):
        problems.append(f"mode {mode!r} (only nearest and linear: cubic has negative weights)")
    crop = _text(attrs.get("coordinate_transformation_mode", "")) == "tf_crop_and_resize"
    if attrs.get("antialias", 0) or "axes" in attrs or crop:
        problems.append("antialias, axes or tf_crop_and_resize")
    if _text(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        problems.append("a keep_aspect_ratio_policy other than 'stretch'")
    x_shape, y_shape = ctx.graph.shape(node.input[0]), ctx.graph.shape(node.output[0])
    scales, sizes = (None if _input(node, k) is None else ctx.graph.constant(node.input[k]) for k in (2, 3))
    if len(x_shape) != 4 or (_input(node, 2) is None and _input(node, 3) is None):
        problems.append("an input that is not (N, C, H, W), or neither scales nor sizes")
    elif (scales is not None and list(scales[:2]) != [1, 1]) or \
            (sizes is not None and not (isinstance(x_shape[1], int) and int(sizes[1]) == x_shape[1])):
        problems.append("resizing of the batch or channel axis")
    elif scales is None and sizes is None and isinstance(y_shape[1], int) and y_shape[1] != x_shape[1]:
        problems.append(f"resizing of the channel axis ({x_shape[1]} -> {y_shape[1]})")
    if problems:
        raise ModelError(f"Resize {node.name!r}: lrp_onnx explains nearest and linear resizing of H and W; this node "
                         f"has {'; '.join(problems)}")


def _axis_transpose(ctx, node, axis: int) -> str:
    """A^T (in x out) of spatial ``axis`` (2 or 3): the node's Resize of the L unit vectors of
    that axis, laid out as (L, 1, L, 1), with the axis' scale (or size) and 1 elsewhere."""
    b, x = ctx.builder, node.input[0]
    index = lambda value, hint: b.const(value, hint, np.int64)  # noqa: E731
    one = index([1], "one")
    pick = [index([axis], "resize_axis"), index([axis + 1], "resize_axis_end")]
    length = b.op("Slice", [ctx.shape_of(x)] + pick, "resize_length")
    zeros = b.op("ConstantOfShape", [b.op("Concat", [length, length], "resize_square", axis=0)], "resize_zeros",
                 value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    units = b.op("Reshape", [b.op("EyeLike", [zeros], "resize_eye"),
                             b.op("Concat", [length, one, length, one], "resize_units_shape", axis=0)], "resize_units")
    if _input(node, 2) is not None:
        entry = b.op("Slice", [node.input[2]] + pick, "resize_scale")
        scales = b.op("Concat", [b.const([1.0, 1.0], "resize_ones"), entry, b.const([1.0], "resize_one")],
                      "resize_axis_scales", axis=0)
        inputs = [units, "", scales]
    else:
        entry = b.op("Slice", [node.input[3]] + pick, "resize_size")
        inputs = [units, "", "", b.op("Concat", [length, one, entry, one], "resize_axis_sizes", axis=0)]
    resized = b.op("Resize", inputs, "resize_unit_images", **attributes(node))
    return b.op("Reshape", [resized, b.op("Concat", [length, index([-1], "rest")], "resize_at_shape", axis=0)],
                "resize_a_t")


def _adjoint(ctx, node):
    """s -> A_h^T s A_w: the adjoint of the resize (shaped like its input), its matrices built once."""
    _check(ctx, node)
    b = ctx.builder
    a_h_t = _axis_transpose(ctx, node, 2)
    a_w = b.op("Transpose", [_axis_transpose(ctx, node, 3)], "resize_aw", perm=[1, 0])
    shape = ctx.shape_of(node.input[0])   # the run-time guard of the module doc
    return lambda s: b.op("Reshape", [b.op("MatMul", [a_h_t, b.op("MatMul", [s, a_w], "c_resize_w")], "c_resize"),
                                      shape], "c_resize")


@register("Resize", family="avgpool", data_slots=(0,))
def resize(ctx, node, rule, relevance):
    attrs = attributes(node)
    adjoint = _adjoint(ctx, node)   # refuses unsupported nodes before building anything else
    layer = LinearLayer(
        node.name, node.input[0], node.output[0],
        forward=lambda x, w, c: ctx.builder.op("Resize", [x] + list(node.input[1:]), "z_resize", **attrs),
        transpose=lambda s, w: adjoint(s))
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@vjp("Resize")
def resize_vjp(ctx, node, g_out):
    return [(node.input[0], _adjoint(ctx, node)(g_out))]
