"""Normalization layers that canonicalization could not fold away.

BatchNormalization (inference) is a per-channel affine map y = s * x + t with
s = scale / sqrt(var + eps), t = B - mean * s: a linear layer with a diagonal weight, so it takes
a rule (family "norm"; composites give it Epsilon(1e-6) unless a predicate picks another, e.g.
Pass). LayerNormalization gets the identity rule, R_in = R_out, as AttnLRP (Achtibat et al.
2024) and LXT do for normalization layers: the division by the standard deviation is treated as
a constant, and the affine part is not given a share of the relevance.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .linear import attributes
from .propagate import LinearLayer, propagate_linear
from .registry import register


@register("BatchNormalization", family="norm", data_slots=(0,))
def batch_norm(ctx, node, rule, relevance):
    """The four LRP steps on y = s * x + t (f^T(s; w) = s * w, element-wise per channel)."""
    b = ctx.builder
    values = [ctx.graph.constant(name) for name in node.input[1:5]]
    if any(v is None for v in values) or len([o for o in node.output if o]) != 1:
        raise ModelError(f"BatchNormalization {node.name!r} needs constant statistics and a single output (inference mode)")
    scale, shift, mean, var = (v.astype(np.float64) for v in values)
    eps = attributes(node).get("epsilon", 1e-5)
    rank = len(ctx.graph.shape(node.input[0]))
    per_channel = (-1,) + (1,) * (rank - 2)
    s = scale / np.sqrt(var + eps)
    weight = ctx.constant_initializer((s).reshape(per_channel).astype(np.float32), "bn_scale")
    bias = ctx.constant_initializer((shift - mean * s).reshape(per_channel).astype(np.float32), "bn_shift")

    def forward(x, w, c):
        scaled = b.op("Mul", [x, w], "z_bn")
        return b.op("Add", [scaled, c], "z_bn") if c else scaled

    layer = LinearLayer(node.name, node.input[0], node.output[0], forward,
                        transpose=lambda s_, w: b.op("Mul", [s_, w], "c_bn"), weight_name=weight, bias_name=bias)
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@register("LayerNormalization", family="activation", data_slots=(0,))
def layer_norm(ctx, node, rule, relevance):
    """Identity rule: R_in = R_out (see module doc)."""
    return [(node.input[0], relevance[node.output[0]])]
