"""ConvTranspose as a layer (decoders, upsampling heads): y = f(x; W, b), linear in x.

ONNX defines ConvTranspose as the adjoint of the Conv with the same weight and geometry (its
pads crop the output, output_padding extends its end), so the rule's transposed step is that
Conv: f^T(s; W) = Conv(s; W, strides, pads, dilations, group), shaped like the input, and the
rule's parameter modifiers apply to W (C_in, C_out / group, k...) and b as for a Conv (family
"conv"). Explicit pads only: auto_pad and output_shape are refused.
"""
from __future__ import annotations

from ..errors import ModelError
from .gradient import vjp
from .linear import _parameters, attributes
from .propagate import LinearLayer, propagate_linear
from .registry import register


def _geometry(ctx, node) -> dict:
    attrs = attributes(node)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET" or "output_shape" in attrs:
        raise ModelError(f"ConvTranspose {node.name!r} sets auto_pad or output_shape; lrp_onnx explains it with "
                         f"explicit pads (and output_padding) only")
    rank = len(ctx.graph.shape(node.input[1])) - 2
    return dict(strides=list(attrs.get("strides", [1] * rank)), pads=list(attrs.get("pads", [0] * 2 * rank)),
                dilations=list(attrs.get("dilations", [1] * rank)), group=attrs.get("group", 1))


def _adjoint(ctx, node, s, w):
    return ctx.builder.op("Conv", [s, w], "c_convtranspose", **_geometry(ctx, node))


@register("ConvTranspose", family="conv", data_slots=(0,))
def conv_transpose(ctx, node, rule, relevance):
    b, attrs = ctx.builder, attributes(node)
    forward_attrs = dict(_geometry(ctx, node), output_padding=list(attrs.get("output_padding", [])) or None)
    forward_attrs = {k: v for k, v in forward_attrs.items() if v is not None}
    layer = LinearLayer(
        node.name, node.input[0], node.output[0],
        forward=lambda x, w, c: b.op("ConvTranspose", [x, w] + ([c] if c else []), "z_convtranspose", **forward_attrs),
        transpose=lambda s, w: _adjoint(ctx, node, s, w), **_parameters(ctx, node))
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@vjp("ConvTranspose")
def conv_transpose_vjp(ctx, node, g_out):
    return [(node.input[0], _adjoint(ctx, node, g_out, node.input[1]))]
