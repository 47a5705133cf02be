"""Resize (nearest and linear upsampling or downsampling of H and W): a linear layer.

Nearest and (bi)linear interpolation are linear in the input with fixed non-negative weights,
y = A_h x A_w^T per channel, so Resize takes a rule's four steps like pooling (family
"avgpool"; parameter modifiers do not apply): z = Resize(a), c = f^T(s) = A_h^T s A_w. The
per-axis matrices A (out x in) are read off ONNX's own Resize, run once at compile time on the
unit vectors of each axis with the node's attributes and that axis' scale or size, so every
coordinate transformation and rounding mode means what it means to onnxruntime. Cubic (negative
weights), antialiasing, crop-and-resize and resizing of the batch or channel axes are refused.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from .gradient import vjp
from .linear import attributes
from .propagate import LinearLayer, propagate_linear
from .registry import register


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _axis_matrix(node, attrs, opset: int, length: int, scale=None, size=None) -> np.ndarray:
    """A (out x in) of one spatial axis: the node's Resize of the unit vectors of that axis."""
    values = {"roi": np.zeros(0, np.float32)}
    if scale is not None:
        values["scales"] = np.array([1, 1, scale, 1], np.float32)
        names = ["x", "roi", "scales"]
    else:
        values["sizes"] = np.array([length, 1, size, 1], np.int64)
        names = ["x", "roi", "", "sizes"]
    graph = helper.make_graph([helper.make_node("Resize", names, ["y"], **attrs)], "axis",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [length, 1, length, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in values.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 13))])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    unit = np.eye(length, dtype=np.float32).reshape(length, 1, length, 1)
    return session.run(None, {"x": unit})[0][:, 0, :, 0].T


def _matrices(ctx, node):
    """(A_h, A_w) of a supported Resize node, else ModelError naming what is not."""
    attrs = attributes(node)
    mode = _text(attrs.get("mode", "nearest"))
    problems = []
    if mode not in ("nearest", "linear"):
        problems.append(f"mode {mode!r} (only nearest and linear: cubic has negative weights)")
    crop = _text(attrs.get("coordinate_transformation_mode", "")) == "tf_crop_and_resize"
    if attrs.get("antialias", 0) or "axes" in attrs or crop:
        problems.append("antialias, axes or tf_crop_and_resize")
    shape = ctx.graph.static_shape(node.input[0])
    scales = ctx.graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = ctx.graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if len(shape) != 3 or (scales is None and sizes is None):
        problems.append("an input that is not (N, C, H, W) or scales/sizes computed at run time")
    elif (scales is not None and list(scales[:2]) != [1, 1]) or (sizes is not None and int(sizes[1]) != shape[0]):
        problems.append("resizing of the batch or channel axis")
    if problems:
        raise ModelError(f"Resize {node.name!r}: lrp_onnx explains nearest and linear resizing of H and W with constant "
                         f"scales or sizes; this node has {'; '.join(problems)}")
    opset = next((o.version for o in ctx.graph.model.opset_import if o.domain in ("", "ai.onnx")), 17)
    return tuple(_axis_matrix(node, attrs, opset, shape[1 + axis], scale=None if scales is None else float(scales[2 + axis]),
                              size=None if sizes is None else int(sizes[2 + axis])) for axis in (0, 1))


def _transpose(ctx, node, s):
    """A_h^T s A_w: the adjoint of the resize (shaped like its input)."""
    b = ctx.builder
    a_h, a_w = _matrices(ctx, node)
    return b.op("MatMul", [b.const(a_h.T, "resize_ah_t"), b.op("MatMul", [s, b.const(a_w, "resize_aw")], "c_resize_w")],
                "c_resize")


@register("Resize", family="avgpool", data_slots=(0,))
def resize(ctx, node, rule, relevance):
    attrs = attributes(node)
    _matrices(ctx, node)   # refuse unsupported nodes before building anything
    layer = LinearLayer(
        node.name, node.input[0], node.output[0],
        forward=lambda x, w, c: ctx.builder.op("Resize", [x] + list(node.input[1:]), "z_resize", **attrs),
        transpose=lambda s, w: _transpose(ctx, node, s))
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@vjp("Resize")
def resize_vjp(ctx, node, g_out):
    return [(node.input[0], _transpose(ctx, node, g_out))]
