"""Normalization layers that canonicalization could not fold away.

BatchNormalization (inference) is a per-channel affine map y = s * x + t with
s = scale / sqrt(var + eps), t = B - mean * s: a linear layer with a diagonal weight, so it takes
a rule (family "norm"; composites give it Epsilon(1e-6) unless a predicate picks another, e.g.
Pass).

LayerNormalization and RMSNormalization are read as AttnLRP and LXT read them (Achtibat et al.
2024, Prop. 3.4; LXT's ``layer_norm`` and ``rms_norm_identity``): the standard deviation (the
root mean square) is a constant of the sample, so the layer is linear in x and takes the
norm family's rule (LRP0, Epsilon or Pass):

    LayerNorm  y = W x + b,  W_ij = w_i (delta_ij - 1/D) / sigma:  with s = R / incr(y),
               R_x = x * (w s - mean(w s)) / sigma     (the mean over the normalized axes)
    RMSNorm    y = w x / rms:                          R_x = x * w s / rms

The bias b is absorbed (it is in y), as in LXT's ``layer_norm``, which differentiates y with
sigma detached and takes x * grad(R / (y + 1e-6)). For RMSNorm (no bias) Epsilon gives
R_x = R y / incr(y), the identity up to the stabilizer; Pass is exactly LXT's identity.
"""
from __future__ import annotations

import numpy as np

from .. import rules as R
from ..canonicalize.private import DOMAIN as PRIVATE_DOMAIN
from ..errors import CompositeError, ModelError
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


#: The rules under which a normalization with its statistics held constant is the linear map of
#: the module doc (a rule that modifies the input or the weights would change the statistics).
_NORM_RULES = (R.LRP0, R.Epsilon, R.Pass)


def normalized_axes(ctx, node):
    rank = len(ctx.graph.shape(node.input[0]))
    axis = attributes(node).get("axis", -1) % rank
    if axis == 0:
        raise ModelError(f"{node.op_type} {node.name!r} normalizes over the batch axis; relevance is explained per sample")
    return list(range(axis, rank))


def inverse_scale(ctx, node, axes, centered: bool) -> str:
    """1 / sqrt(mean((x - mean x)^2) + eps) (LayerNorm) or 1 / sqrt(mean(x^2) + eps) (RMSNorm),
    recomputed from x: the constant of each sample."""
    b, x = ctx.builder, node.input[0]
    if centered:
        x = b.op("Sub", [x, b.reduce("ReduceMean", x, axes, hint="ln_mean")], "ln_centered")
    variance = b.reduce("ReduceMean", b.op("Mul", [x, x], "ln_square"), axes, hint="ln_var")
    eps = b.const(attributes(node).get("epsilon", 1e-5))
    return b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [variance, eps], "ln_var_eps")], "ln_std")], "ln_inv_std")


def _statistics_constant(ctx, node, rule, relevance, centered: bool):
    if not isinstance(rule, _NORM_RULES):
        raise CompositeError(f"{node.op_type} {node.name!r} (family 'norm') takes LRP0, Epsilon or Pass, not {rule}: "
                             f"its statistics are held constant, which a rule that modifies inputs or weights would break")
    b = ctx.builder
    scale = node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    for role, name in (("scale", scale), ("bias", bias)):
        if name is not None and name not in ctx.graph.constants:
            raise ModelError(f"{node.op_type} {node.name!r} has a computed {role} {name!r}; lrp_onnx needs constant parameters")
    axes = normalized_axes(ctx, node)
    inverse = inverse_scale(ctx, node, axes, centered)

    def forward(x, w, c):   # only without the bias (zero_bias): the same statistics
        return b.op(node.op_type, [x, w], "z_norm", domain=node.domain, **attributes(node))

    def transpose(s, w):
        ws = b.op("Mul", [s, w], "norm_ws")
        if centered:
            ws = b.op("Sub", [ws, b.reduce("ReduceMean", ws, axes, hint="norm_ws_mean")], "norm_ws_centered")
        return b.op("Mul", [ws, inverse], "c_norm")

    layer = LinearLayer(node.name, node.input[0], node.output[0], forward, transpose, weight_name=scale, bias_name=bias)
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@register("LayerNormalization", family="norm", data_slots=(0,))
def layer_norm(ctx, node, rule, relevance):
    """LayerNorm with sigma held constant: a linear layer under the norm rule (module doc)."""
    return _statistics_constant(ctx, node, rule, relevance, centered=True)


@register("RMSNormalization", family="norm", data_slots=(0,))
@register("RMSNormalization", family="norm", data_slots=(0,), domain=PRIVATE_DOMAIN)
def rms_norm(ctx, node, rule, relevance):
    """RMSNorm (ONNX opset 23, or canonicalize/rmsnorm.py's node below it) with the rms held
    constant: a per-element scaling under the norm rule (module doc)."""
    return _statistics_constant(ctx, node, rule, relevance, centered=False)


# --------------------------------------------------------------------------- LRN
# Local response normalization (Krizhevsky et al. 2012, section 3.3; ONNX LRN) over a window of
# `size` channels, c - floor((size-1)/2) .. c + ceil((size-1)/2) clipped to [0, C):
#     y_c = x_c d_c,   d_c = D_c^-beta,   D_c = bias + alpha / size * sum_window x_i^2
# Read as the norm family reads LayerNorm under LXT: the denominator d is a constant of the
# sample, so the layer is an element-wise scaling under the norm rule, z = x d and
# f^T(s) = s d: LRP0 gives R_x = R (relevance passes element-wise), Epsilon R y / incr(y),
# Pass exactly R. Its gradient (ops/gradient.py) differentiates d.


def lrn_window_sum(ctx, node, t: str, transposed: bool = False) -> str:
    """sum_i t_i over each channel's LRN window, as a Conv with a (size, 1) kernel of ones on
    t reshaped (N, 1, C, -1); ``transposed``: the adjoint (the window's pads swapped)."""
    b = ctx.builder
    channels = ctx.graph.static_shape(node.input[0])[0]
    size = int(attributes(node)["size"])
    low, high = (size - 1) // 2, size // 2
    if transposed:
        low, high = high, low
    column = b.op("Reshape", [t, b.const([0, 1, channels, -1], "lrn_column", np.int64)], "lrn_column")
    summed = b.op("Conv", [column, b.const(np.ones((1, 1, size, 1), np.float32), "lrn_window")], "lrn_window_sum",
                  pads=[low, 0, high, 0])
    return b.op("Reshape", [summed, ctx.shape_of(node.input[0])], "lrn_window_sum")


def lrn_denominator(ctx, node):
    """(D, d): D = bias + alpha / size * sum_window x^2 and d = D^-beta (the section above)."""
    b, x = ctx.builder, node.input[0]
    attrs = attributes(node)
    window = lrn_window_sum(ctx, node, b.op("Mul", [x, x], "lrn_square"))
    scaled = b.op("Mul", [window, b.const(attrs.get("alpha", 1e-4) / int(attrs["size"]))], "lrn_scaled")
    denominator = b.op("Add", [scaled, b.const(attrs.get("bias", 1.0))], "lrn_denominator")
    return denominator, b.op("Pow", [denominator, b.const(-attrs.get("beta", 0.75))], "lrn_d")


@register("LRN", family="norm", data_slots=(0,))
def lrn(ctx, node, rule, relevance):
    """LRN with its denominator held constant: y = x d under the norm rule (section above)."""
    if not isinstance(rule, _NORM_RULES):
        raise CompositeError(f"LRN {node.name!r} (family 'norm') takes LRP0, Epsilon or Pass, not {rule}: its "
                             f"denominator is held constant, which a rule that modifies inputs would break")
    b = ctx.builder
    _, d = lrn_denominator(ctx, node)
    layer = LinearLayer(node.name, node.input[0], node.output[0], forward=lambda x, w, c: b.op("Mul", [x, d], "z_lrn"),
                        transpose=lambda s, w: b.op("Mul", [s, d], "c_lrn"))
    return [(node.input[0], propagate_linear(ctx, layer, rule, relevance[node.output[0]]))]


@register("LpNormalization", family="scale", data_slots=(0,))
def lp_norm(ctx, node, rule, relevance):
    """y = x / ||x||_p over one axis (a sentence embedding's L2 normalization): the norm is a
    constant of the sample, as LayerNorm's sigma is in AttnLRP and LXT (Achtibat et al. 2024,
    Prop. 3.4; Ali et al. 2022's LayerNorm with its statistics detached), so y is x
    scaled by a positive constant and R_x = R, like a Mul by a constant (ops/arithmetic.py)."""
    rank = len(ctx.graph.shape(node.input[0]))
    if attributes(node).get("axis", -1) % rank == 0:
        raise ModelError(f"LpNormalization {node.name!r} normalizes over the batch axis; relevance is explained per sample")
    return [(node.input[0], relevance[node.output[0]])]
