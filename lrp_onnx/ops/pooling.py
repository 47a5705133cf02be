"""AveragePool, GlobalAveragePool and MaxPool.

Average pooling is linear with fixed weights 1/d over each window, so it takes a rule like any
linear layer (rules' parameter modifiers do not apply: there are no parameters). Its transpose
spreads s/d back over each window with a depthwise ConvTranspose of ones. Spatial sizes may be
dynamic (ops.linear.conv_geometry: not with ceil_mode). MaxPool is either
treated as average pooling (mode "avg", the tutorial) or gives each output's relevance to the
input that won the max (mode "winner", what zennit's gradient does).
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..errors import ModelError
from .linear import attributes, conv_geometry, dims_from, transposed_conv
from .propagate import LinearLayer, implies_zeros, propagate_linear
from .registry import register


def _channels(ctx, tensor: str) -> int:
    """The channel count (axis 1) of ``tensor``, which must be static (spatial sizes need not)."""
    channels = ctx.graph.shape(tensor)[1]
    return channels if isinstance(channels, int) else ctx.graph.static_shape(tensor)[0]


def _ones_like_sample(ctx, tensor: str, static: bool) -> str:
    """Ones shaped (1, 1, *spatial size of ``tensor``): a constant, or built at run time."""
    b = ctx.builder
    if static:
        return b.const(np.ones([1, 1] + list(ctx.graph.shape(tensor)[2:]), np.float32), "pool_ones")
    shape = b.op("Concat", [b.const([1, 1], "pool_one_one", np.int64), dims_from(ctx, tensor, 2)], "pool_ones_shape",
                 axis=0)
    return b.op("ConstantOfShape", [shape], "pool_ones", value=helper.make_tensor("one", 1, [1], [1.0]))


def _window_layer(ctx, node, count_include_pad: bool, reuse_output: bool) -> LinearLayer:
    """The linear map z_o = sum_{i in window(o)} a_i / d_o of an AveragePool (or of a MaxPool
    read as one), with d_o taken from ONNX's own AveragePool on a tensor of ones (of the
    input's spatial size: a constant, or at run time for dynamic sizes, see conv_geometry)."""
    b = ctx.builder
    attrs = attributes(node)
    kernel = list(attrs["kernel_shape"])
    channels = _channels(ctx, node.input[0])
    pads, strides, dilations, output_padding = conv_geometry(ctx, node, kernel)
    geometry = dict(pads=pads, strides=strides, dilations=dilations)
    ones_in = _ones_like_sample(ctx, node.input[0], output_padding is not None)
    window = b.const(np.ones([1, 1] + kernel, np.float32), "pool_window")
    count = b.op("Conv", [ones_in, window], "pool_count", **geometry)
    if count_include_pad:   # ONNX's divisor, read off AveragePool itself (folded at load)
        pooled = b.op("AveragePool", [ones_in], "pool_of_ones", **attrs)
        inv_d = b.op("Div", [pooled, b.op("Max", [count, b.const(1.0)], "pool_count1")], "pool_inv_d")
    else:
        inv_d = b.op("Reciprocal", [b.op("Max", [count, b.const(1.0)], "pool_count1")], "pool_inv_d")
    depthwise = b.const(np.ones([channels, 1] + kernel, np.float32), "pool_kernel")

    def forward(x, w, c):
        return b.op("Mul", [b.op("Conv", [x, depthwise], "pool_sum", group=channels, **geometry), inv_d], "z_pool")

    def transpose(s, w):
        return transposed_conv(ctx, b.op("Mul", [s, inv_d], "s_pool"), depthwise, node.input[0],
                               dict(group=channels, **geometry), output_padding, "c_pool")

    return LinearLayer(node.name, node.input[0], node.output[0], forward, transpose, reuse_output=reuse_output)


@register("AveragePool", family="avgpool", data_slots=(0,))
def average_pool(ctx, node, rule, relevance):
    include = bool(attributes(node).get("count_include_pad", 0))
    layer = _window_layer(ctx, node, include, reuse_output=True)
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@register("GlobalAveragePool", family="avgpool", data_slots=(0,))
def global_average_pool(ctx, node, rule, relevance):
    """z = mean over the spatial axes; f^T(s) = s / (H*W...) broadcast over them (H*W... read
    at run time, size(input) / size(output), when they are dynamic)."""
    b = ctx.builder
    x, y = node.input[0], node.output[0]
    spatial = ctx.graph.shape(x)[2:]
    if all(isinstance(d, int) for d in spatial):
        inv_size = b.const(1.0 / float(np.prod(spatial)))
    else:
        size = b.op("Div", [b.op("Size", [x], "gap_in_size"), b.op("Size", [y], "gap_out_size")], "gap_window")
        inv_size = b.op("Reciprocal", [b.op("Cast", [size], "gap_window_f", to=1)], "gap_inv_size")
    shape = ctx.shape_of(node.input[0])
    layer = LinearLayer(
        node.name, node.input[0], node.output[0],
        forward=lambda x, w, c: b.op("GlobalAveragePool", [x], "z_gap"),
        transpose=lambda s, w: b.op("Expand", [b.op("Mul", [s, inv_size], "s_gap"), shape], "c_gap"),
    )
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@register("MaxPool", family="maxpool", data_slots=(0,))
def max_pool(ctx, node, rule, relevance):
    if ctx.maxpool == "avg":
        layer = _window_layer(ctx, node, count_include_pad=False, reuse_output=False)
        return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]
    return [(node.input[0], _winner_take_all(ctx, node, relevance[node.output[0]]))]


def _winner_take_all(ctx, node, r_out):
    """R_in = scatter-add of R_out onto the arg-max of each window (MaxPool's Indices output,
    flat indices over the whole N*C*H*W input, ONNX row-major storage order). Disjoint windows
    (stride >= dilated kernel, as in VGG) have distinct arg-maxes: MaxUnpool places R_out
    there, faster than ScatterElements."""
    b = ctx.builder
    attrs = attributes(node)
    if attrs.get("storage_order", 0):
        raise ModelError(f"MaxPool {node.name!r} uses column-major storage_order; not supported")
    indices = ctx.maxpool_indices(node)
    shape = ctx.shape_of(node.input[0])
    kernel = list(attrs["kernel_shape"])
    pads, strides, dilations, _ = conv_geometry(ctx, node, kernel)
    if all(s >= d * (k - 1) + 1 for s, k, d in zip(strides, kernel, dilations)):
        r_in = b.op("MaxUnpool", [r_out, indices, shape], "r_maxpool", kernel_shape=kernel, strides=strides, pads=pads)
    else:
        flat_shape = b.const([-1], "flat", np.int64)
        zeros = b.op("Reshape", [b.op("ConstantOfShape", [shape], "zeros", value=helper.make_tensor("v", 1, [1], [0.0])),
                                 flat_shape], "zeros_flat")
        scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, flat_shape], "idx_flat"),
                                             b.op("Reshape", [r_out, flat_shape], "r_flat")],
                         "r_scatter", axis=0, reduction="add")
        r_in = b.op("Reshape", [scattered, shape], "r_maxpool")
    # an input that is 0 gets relevance only from windows whose maximum is 0
    implies_zeros(ctx, r_in, node.input[0], r_out, node.output[0])
    return r_in
