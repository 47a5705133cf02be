"""Gemm, MatMul with a constant weight, and Conv: the linear layers with parameters (a MatMul
of two activations is dispatched to ops/bilinear.py)."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..canonicalize.gemm import is_canonical
from ..checks import HINT_STATIC
from ..errors import ModelError
from . import bilinear
from .propagate import LinearLayer, propagate_linear
from .registry import register


#: f^T of a stride-1 Conv runs as a Conv (flipped kernel) when the layer has at least this many
#: input channels; into fewer (an RGB input) ConvTranspose is faster on onnxruntime's CPU
#: (measured per VGG-16 layer: 7 ms against 17 ms into 3 channels, 25 against 52 ms into 64).
MIN_CHANNELS_FOR_CONV = 16


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _parameters(ctx, node) -> dict:
    """weight_name/bias_name of a node whose input 1 (and 2, if given) are constants."""
    names = {"weight_name": node.input[1], "bias_name": node.input[2] if len(node.input) > 2 and node.input[2] else None}
    for role, name in names.items():
        if name is not None and name not in ctx.graph.constants:
            raise ModelError(
                f"node {node.name!r} ({node.op_type}) multiplies two activations: its {role[:-5]} "
                f"{name!r} is not a constant, and lrp_onnx needs constant parameters"
            )
    return names


@register("Gemm", family="dense", data_slots=(0,))
def gemm(ctx, node, rule, relevance):
    """Y = A @ W^T + C (canonical after normalize_gemm, W of shape (N, K)); f^T(s) = s @ W."""
    if not is_canonical(node):
        raise ModelError(f"Gemm {node.name!r} multiplies two activations (its weight is not a constant)")
    b = ctx.builder
    layer = LinearLayer(
        node.name, node.input[0], node.output[0],
        forward=lambda x, w, c: b.op("Gemm", [x, w] + ([c] if c else []), "z_gemm", transB=1),
        transpose=lambda s, w: b.op("Gemm", [s, w], "c_gemm"),
        **_parameters(ctx, node),
    )
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@register("MatMul", family="dense")
def matmul(ctx, node, rule, relevance):
    """Y = X @ W with a constant 2-D W (X of any rank >= 2); f^T(s) = s @ W^T. A MatMul of two
    activations (W not a constant: Q K^T, A V) is family "bilinear" (ops/families.py) and
    takes the bilinear rule (ops/bilinear.py)."""
    if node.input[1] not in ctx.graph.constants:
        return bilinear.matmul(ctx, node, rule, relevance)
    b = ctx.builder
    parameters = _parameters(ctx, node)
    if len(ctx.graph.shape(node.input[1])) != 2:
        raise ModelError(f"MatMul {node.name!r} has a {len(ctx.graph.shape(node.input[1]))}-D weight; only 2-D weights are supported")
    transposed = {}

    def transpose(s, w):
        if w not in transposed:
            transposed[w] = b.op("Transpose", [w], "w_T")   # folded by onnxruntime at load
        return b.op("MatMul", [s, transposed[w]], "c_matmul")

    layer = LinearLayer(
        node.name, node.input[0], node.output[0],
        forward=lambda x, w, c: b.op("MatMul", [x, w], "z_matmul"),
        transpose=transpose, **parameters,
    )
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


def conv_geometry(ctx, node, kernel):
    """Explicit (pads, strides, dilations, output_padding) of a Conv/pool node from its
    attributes and shapes; auto_pad is resolved here, as ONNX defines it. With a dynamic
    spatial size output_padding is None (f^T: ``transposed_conv``); what depends on the size
    itself (SAME padding with a stride, ceil_mode) needs it static."""
    attrs = attributes(node)
    spatial_in, spatial_out = ctx.graph.shape(node.input[0])[2:], ctx.graph.shape(node.output[0])[2:]
    static = all(isinstance(d, int) for d in spatial_in + spatial_out)
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    pads = list(attrs.get("pads", [0] * (2 * n)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if not static and (attrs.get("ceil_mode", 0) or (auto_pad.startswith("SAME") and max(strides) > 1)):
        what = "ceil_mode" if attrs.get("ceil_mode", 0) else f"{auto_pad} padding with strides {strides}"
        raise ModelError(f"{node.op_type} {node.name!r} has {what}, whose padding depends on the spatial size, and "
                         f"tensor {node.input[0]!r} has dynamic sizes {ctx.graph.shape(node.input[0])}: {HINT_STATIC}")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(n):
            reach = (kernel[i] - 1) * dilations[i] + 1
            total = max(0, (spatial_out[i] - 1) * strides[i] + reach - spatial_in[i]) if static else reach - 1
            small, large = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    if not static:
        return pads, strides, dilations, None
    output_padding = []
    for i in range(n):
        # windows that ceil_mode adds past the end are covered by extra end padding
        reach = (spatial_out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        pads[i + n] = max(pads[i + n], reach - spatial_in[i] - pads[i])
        covered = reach - pads[i] - pads[i + n]
        output_padding.append(spatial_in[i] - covered)
        if not 0 <= output_padding[-1] < max(strides[i], dilations[i]):
            raise ModelError(f"cannot invert the geometry of {node.name!r} ({node.op_type}) on axis {i + 2}")
    return pads, strides, dilations, output_padding


def dims_from(ctx, tensor: str, axis: int) -> str:
    """The sizes of ``tensor`` from ``axis`` on, read at run time."""
    b = ctx.builder
    return b.op("Slice", [ctx.shape_of(tensor), b.const([axis], "dims_start", np.int64),
                          b.const([np.iinfo(np.int64).max], "dims_end", np.int64)], "dims")


def transposed_conv(ctx, s: str, w: str, x: str, geometry: dict, output_padding, hint: str) -> str:
    """f^T(s) of a Conv/pool: ConvTranspose(s; w) with the layer's geometry, shaped like its
    input ``x``. With a dynamic size and a stride (output_padding None, conv_geometry) the
    output_padding is unknown: the ConvTranspose keeps the end padding's rows, and the result
    is cut to x's size (dropping the padding) and zero-padded up to it (rows no window
    reached); at stride 1 the windows cover x exactly."""
    b, strides = ctx.builder, geometry["strides"]
    if output_padding is not None or max(strides) == 1:
        return b.op("ConvTranspose", [s, w], hint, output_padding=output_padding or [0] * len(strides), **geometry)
    n = len(strides)
    full = b.op("ConvTranspose", [s, w], hint, **{**geometry, "pads": list(geometry["pads"][:n]) + [0] * n})
    size = dims_from(ctx, x, 2)
    axes = b.const(list(range(2, n + 2)), "spatial_axes", np.int64)
    cut = b.op("Slice", [full, b.const([0] * n, "zeros_n", np.int64), size, axes], hint)
    missing = b.op("Sub", [size, dims_from(ctx, cut, 2)], "c_missing")
    pads = b.op("Concat", [b.const([0] * (n + 4), "c_pad_begin", np.int64), missing], "c_pads", axis=0)
    return b.op("Pad", [cut, pads], hint, mode="constant")


def flipped_pads(kernel, pads, strides, dilations, output_padding):
    """Pads of the Conv that computes a stride-1 ConvTranspose (None when there is none):
    y_i = sum_k s_{i + p_begin - k d} w_k is a convolution with the kernel flipped and pads
    d (K-1) - p_begin at the start, d (K-1) - p_end + output_padding at the end."""
    n = len(kernel)
    if any(s != 1 for s in strides):
        return None
    reach = [d * (k - 1) for k, d in zip(kernel, dilations)]
    flipped = [reach[i] - pads[i] for i in range(n)] + [reach[i] - pads[n + i] + output_padding[i] for i in range(n)]
    return flipped if min(flipped) >= 0 else None


def flip_kernel(b, w: str, shape, group: int) -> str:
    """The Conv weight of f^T from the Conv weight w of ``shape`` (C_out, C_in/g, k...): per
    group, the in/out channels swapped, (C_in, C_out/g, k...), and every spatial axis reversed.
    Built from constants only, so onnxruntime folds it at session creation."""
    rank, (c_out, c_in_group), kernel = len(shape), shape[:2], list(shape[2:])
    grouped = b.op("Reshape", [w, b.const([group, c_out // group, c_in_group] + kernel, "w_groups", np.int64)], "w_groups")
    swapped = b.op("Transpose", [grouped], "w_swap", perm=[0, 2, 1] + list(range(3, rank + 1)))
    swapped = b.op("Reshape", [swapped, b.const([group * c_in_group, c_out // group] + kernel, "w_swap", np.int64)], "w_swap")
    axes = list(range(2, rank))
    return b.op("Slice", [swapped, b.const([-1] * len(axes), "flip_start", np.int64),
                          b.const([np.iinfo(np.int64).min] * len(axes), "flip_end", np.int64),
                          b.const(axes, "flip_axes", np.int64), b.const([-1] * len(axes), "flip_step", np.int64)],
                "w_flip")


@register("Conv", family="conv", data_slots=(0,))
def conv(ctx, node, rule, relevance):
    """Convolution with groups, strides, pads (asymmetric), dilations, auto_pad; spatial sizes
    static or dynamic (conv_geometry). f^T is a ConvTranspose with the same weight and
    geometry, shaped back to the input; at stride 1 it is the Conv with the flipped kernel
    (``flipped_pads``), which onnxruntime's CPU kernels run faster, except into few channels
    (MIN_CHANNELS_FOR_CONV)."""
    b = ctx.builder
    parameters = _parameters(ctx, node)
    group = attributes(node).get("group", 1)
    weight_shape = ctx.graph.shape(node.input[1])
    kernel = weight_shape[2:]
    pads, strides, dilations, output_padding = conv_geometry(ctx, node, kernel)
    geometry = dict(pads=pads, strides=strides, dilations=dilations, group=group)
    as_conv = (flipped_pads(kernel, pads, strides, dilations, output_padding or [0] * len(kernel))
               if weight_shape[1] * group >= MIN_CHANNELS_FOR_CONV else None)
    flipped = {}

    def transpose(s, w):
        if as_conv is None:
            return transposed_conv(ctx, s, w, node.input[0], geometry, output_padding, "c_conv")
        if w not in flipped:
            flipped[w] = flip_kernel(b, w, weight_shape, group)
        return b.op("Conv", [s, flipped[w]], "c_conv", pads=as_conv, dilations=dilations, group=group)

    layer = LinearLayer(
        node.name, node.input[0], node.output[0],
        forward=lambda x, w, c: b.op("Conv", [x, w] + ([c] if c else []), "z_conv", **geometry),
        transpose=transpose, **parameters,
    )
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]
