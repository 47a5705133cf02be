"""Gradient mode: the vector-Jacobian products that turn the relevance graph into the gradient
of the explained score (the "gradient" and "gradient_x_input" methods, composites.gradient).

The compile loop is the same; in gradient mode the tensor flowing back is G = d score / d t
(starting from the target mask at the output) and each node's handler comes from
``GRADIENT_HANDLERS`` instead of ``HANDLERS``:

- linear layers (Gemm, MatMul, Conv, pools, Reduce, BatchNormalization) keep their LRP handler:
  under the Gradient rule ``propagate_linear`` returns ``f^T(G; W)``, their VJP; so do MatMul
  and Einsum of two activations (ops/bilinear.py: G b^T and a^T G under the Gradient rule);
- MaxPool (winner-take-all: G to each window's arg-max), shape ops, Concat/Split/Slice/Pad and
  Gather*/Where/Expand only move elements: their relevance handler already is their VJP;
- activations, sums and products get their derivative here (Relu: G * (x > 0), ...), and so do
  Softmax, LayerNormalization and RMSNormalization (their statistics differentiated, unlike
  the LRP rules that hold them constant).

An op without an entry has no VJP in lrp_onnx: compiling a gradient for it is an
UnsupportedOpError naming it, never a silent pass-through.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import onnx

from ..errors import UnsupportedOpError
from ..canonicalize.private import DOMAIN as PRIVATE_DOMAIN
from .linear import attributes
from .normalization import inverse_scale, lrn_denominator, lrn_window_sum, normalized_axes
from .registry import HANDLERS, Key, key_name, lookup
from .softmax import softmax_axis

#: Ops whose relevance handler is their VJP (under the Gradient rule for the linear layers).
SAME_AS_RELEVANCE = (
    "Gemm", "MatMul", "Conv", "AveragePool", "GlobalAveragePool", "MaxPool", "ReduceMean", "ReduceSum",
    "BatchNormalization",
    "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Concat", "Split", "Slice", "Pad",
    "Einsum", "Gather", "GatherElements", "GatherND", "Where", "Expand",
)

GRADIENT_HANDLERS: Dict[Key, Callable] = {("", op): HANDLERS["", op].propagate for op in SAME_AS_RELEVANCE}


def vjp(*op_types: str, domain: str = ""):
    """Decorator: ``fn(ctx, node, G_out) -> [(input, G_in)]`` is the VJP of ``op_types`` (of ``domain``)."""

    def wrap(fn):
        for op_type in op_types:
            if (domain, op_type) in GRADIENT_HANDLERS:
                raise RuntimeError(f"two gradient handlers registered for {key_name((domain, op_type))}")
            GRADIENT_HANDLERS[domain, op_type] = lambda ctx, node, rule, relevance, fn=fn: fn(ctx, node, relevance[node.output[0]])
        return fn

    return wrap


def handler_for(node: onnx.NodeProto) -> Callable:
    return lookup(GRADIENT_HANDLERS, node, "gradient (vector-Jacobian product)")


def _where(b, condition: str, g: str, other: str) -> str:
    return b.op("Where", [condition, g, other], "g_where")


def _mask(ctx, x: str, test: str, bound: float) -> str:
    b = ctx.builder
    return b.op(test, [x, b.const(bound)], "g_cond")


@vjp("Relu")
def relu(ctx, node, g):
    """G * (x > 0)."""
    b, x = ctx.builder, node.input[0]
    return [(x, _where(b, _mask(ctx, x, "Greater", 0.0), g, b.const(0.0)))]


@vjp("LeakyRelu")
def leaky_relu(ctx, node, g):
    """G where x > 0, alpha * G elsewhere."""
    b, x = ctx.builder, node.input[0]
    alpha = attributes(node).get("alpha", 0.01)
    return [(x, _where(b, _mask(ctx, x, "Greater", 0.0), g, b.op("Mul", [g, b.const(alpha)], "g_leak")))]


@vjp("PRelu")
def prelu(ctx, node, g):
    """G where x > 0, slope * G elsewhere (the slope is a constant)."""
    b, x = ctx.builder, node.input[0]
    return [(x, _where(b, _mask(ctx, x, "Greater", 0.0), g, b.op("Mul", [g, node.input[1]], "g_prelu")))]


@vjp("Elu")
def elu(ctx, node, g):
    """G where x > 0, G * (y + alpha) elsewhere."""
    b, x, y = ctx.builder, node.input[0], node.output[0]
    alpha = attributes(node).get("alpha", 1.0)
    slope = b.op("Mul", [g, b.op("Add", [y, b.const(alpha)], "elu_dy")], "g_elu")
    return [(x, _where(b, _mask(ctx, x, "Greater", 0.0), g, slope))]


@vjp("Sigmoid")
def sigmoid(ctx, node, g):
    """G * y * (1 - y)."""
    b, y = ctx.builder, node.output[0]
    dy = b.op("Mul", [y, b.op("Sub", [b.const(1.0), y], "one_minus_y")], "sigmoid_dy")
    return [(node.input[0], b.op("Mul", [g, dy], "g_sigmoid"))]


@vjp("HardSigmoid")
def hard_sigmoid(ctx, node, g):
    """G * alpha where 0 < alpha x + beta < 1, else 0."""
    b, x = ctx.builder, node.input[0]
    attrs = attributes(node)
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    lin = b.op("Add", [b.op("Mul", [x, b.const(alpha)], "hs_ax"), b.const(beta)], "hs_lin")
    inside = b.op("And", [_mask(ctx, lin, "Greater", 0.0), _mask(ctx, lin, "Less", 1.0)], "hs_inside")
    return [(x, _where(b, inside, b.op("Mul", [g, b.const(alpha)], "g_hs"), b.const(0.0)))]


@vjp("Tanh")
def tanh(ctx, node, g):
    """G * (1 - y^2)."""
    b, y = ctx.builder, node.output[0]
    dy = b.op("Sub", [b.const(1.0), b.op("Mul", [y, y], "y_sq")], "tanh_dy")
    return [(node.input[0], b.op("Mul", [g, dy], "g_tanh"))]


@vjp("Softplus")
def softplus(ctx, node, g):
    """G * sigmoid(x)."""
    b, x = ctx.builder, node.input[0]
    return [(x, b.op("Mul", [g, b.op("Sigmoid", [x], "softplus_dy")], "g_softplus"))]


@vjp("Clip")
def clip(ctx, node, g):
    """G where min < x < max (strictly, as torch's ReLU6/hardtanh), else 0."""
    b, x = ctx.builder, node.input[0]
    attrs = attributes(node)
    bounds = []
    for slot, attr, test in ((1, "min", "Greater"), (2, "max", "Less")):
        if len(node.input) > slot and node.input[slot]:
            bounds.append(b.op(test, [x, node.input[slot]], "g_cond"))
        elif attr in attrs:   # opset < 11
            bounds.append(_mask(ctx, x, test, attrs[attr]))
    if not bounds:
        return [(x, g)]
    inside = bounds[0] if len(bounds) == 1 else b.op("And", bounds, "clip_inside")
    return [(x, _where(b, inside, g, b.const(0.0)))]


@vjp("Erf")
def erf(ctx, node, g):
    """G * 2/sqrt(pi) * exp(-x^2)."""
    b, x = ctx.builder, node.input[0]
    dy = b.op("Mul", [b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x], "x_sq")], "neg_x_sq")], "erf_exp"),
                      b.const(2.0 / math.sqrt(math.pi))], "erf_dy")
    return [(x, b.op("Mul", [g, dy], "g_erf"))]


@vjp("Gelu")
def gelu(ctx, node, g):
    """Exact GELU: G * (Phi(x) + x * phi(x)); approximate="tanh": as GeluTanh below."""
    approximate = attributes(node).get("approximate", b"none")
    if (approximate.decode() if isinstance(approximate, bytes) else approximate) == "tanh":
        return gelu_tanh(ctx, node, g)
    b, x = ctx.builder, node.input[0]
    cdf = b.op("Mul", [b.op("Add", [b.op("Erf", [b.op("Mul", [x, b.const(1 / math.sqrt(2))], "gelu_s")], "gelu_erf"),
                                    b.const(1.0)], "gelu_1p"), b.const(0.5)], "gelu_cdf")
    pdf = b.op("Mul", [b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x], "x_sq"), b.const(-0.5)], "gelu_e")], "gelu_exp"),
                       b.const(1 / math.sqrt(2 * math.pi))], "gelu_pdf")
    dy = b.op("Add", [cdf, b.op("Mul", [x, pdf], "gelu_xpdf")], "gelu_dy")
    return [(x, b.op("Mul", [g, dy], "g_gelu"))]


@vjp("GeluTanh", domain=PRIVATE_DOMAIN)
def gelu_tanh(ctx, node, g):
    """y = x (1 + t) / 2, t = tanh(c (x + k x^3)): G * ((1 + t) / 2 + x (1 - t^2) c (1 + 3 k x^2) / 2)."""
    b, x = ctx.builder, node.input[0]
    c, k = math.sqrt(2 / math.pi), 0.044715
    x2 = b.op("Mul", [x, x], "x_sq")
    u = b.op("Mul", [b.op("Add", [x, b.op("Mul", [b.op("Mul", [x2, x], "x_cube"), b.const(k)], "gt_kx3")], "gt_u0"),
                     b.const(c)], "gt_u")
    t = b.op("Tanh", [u], "gt_t")
    du = b.op("Mul", [b.op("Add", [b.op("Mul", [x2, b.const(3 * k)], "gt_3kx2"), b.const(1.0)], "gt_du0"), b.const(c)], "gt_du")
    dt = b.op("Mul", [b.op("Sub", [b.const(1.0), b.op("Mul", [t, t], "gt_t2")], "gt_sech2"), du], "gt_dt")
    dy = b.op("Mul", [b.op("Add", [b.op("Add", [t, b.const(1.0)], "gt_1pt"), b.op("Mul", [x, dt], "gt_xdt")], "gt_2dy"),
                      b.const(0.5)], "gt_dy")
    return [(x, b.op("Mul", [g, dy], "g_gelu_tanh"))]


@vjp("HardSwish")
def hard_swish(ctx, node, g):
    """x * relu6(x + 3) / 6: G * 0 for x < -3, G for x > 3, G * (2x + 3) / 6 between (torch's)."""
    b, x = ctx.builder, node.input[0]
    middle = b.op("Mul", [g, b.op("Add", [b.op("Mul", [x, b.const(1 / 3)], "hsw_x3"), b.const(0.5)], "hsw_dy")], "g_hsw")
    upper = _where(b, _mask(ctx, x, "Greater", 3.0), g, middle)
    return [(x, _where(b, _mask(ctx, x, "Less", -3.0), b.const(0.0), upper))]


@vjp("Add", "Sub", "Sum")
def summands(ctx, node, g):
    """G to every summand on the path (negated for Sub's second), summed over broadcast axes."""
    b, y = ctx.builder, node.output[0]
    result = []
    for slot, name in enumerate(node.input):
        if not ctx.carries(name):
            continue
        share = b.op("Neg", [g], "g_neg") if node.op_type == "Sub" and slot == 1 else g
        result.append((name, ctx.unbroadcast(share, y, name)))
    return result


@vjp("Mul")
def product(ctx, node, g):
    """d(a b) = G b for a and G a for b (a constant factor, a gate or another activation)."""
    b, y = ctx.builder, node.output[0]
    result = []
    for name, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        if ctx.carries(name):
            result.append((name, ctx.unbroadcast(b.op("Mul", [g, other], "g_mul"), y, name)))
    return result


@vjp("Neg")
def negation(ctx, node, g):
    """-G."""
    return [(node.input[0], ctx.builder.op("Neg", [g], "g_neg"))]


@vjp("Div")
def quotient(ctx, node, g):
    """d(a / b) = G / b for a and -G a / b^2 = -G y / b for b."""
    b, y = ctx.builder, node.output[0]
    num, den = node.input[0], node.input[1]
    result = []
    if ctx.carries(num):
        result.append((num, ctx.unbroadcast(b.op("Div", [g, den], "g_div"), y, num)))
    if ctx.carries(den):
        g_den = b.op("Neg", [b.op("Div", [b.op("Mul", [g, y], "g_y"), den], "g_den")], "g_den")
        result.append((den, ctx.unbroadcast(g_den, y, den)))
    return result


@vjp("Softmax")
def softmax(ctx, node, g):
    """s * (G - sum_axis(s * G))."""
    b, s = ctx.builder, node.output[0]
    total = b.reduce("ReduceSum", b.op("Mul", [s, g], "g_sg"), [softmax_axis(ctx, node)], keepdims=1, hint="g_sg_sum")
    return [(node.input[0], b.op("Mul", [s, b.op("Sub", [g, total], "g_centered")], "g_softmax"))]


def _scale_gradient(ctx, node, g) -> str:
    """G * w (the LayerNorm/RMSNorm scale; computed scales have no gradient here)."""
    if node.input[1] not in ctx.graph.constants:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r} has a computed scale; its gradient is not implemented")
    return ctx.builder.op("Mul", [g, node.input[1]], "g_scaled")


@vjp("LayerNormalization")
def layer_norm(ctx, node, g):
    """With x^ = (x - mean) / sigma and g = G * w: (g - mean(g) - x^ mean(g x^)) / sigma."""
    b, x = ctx.builder, node.input[0]
    axes = normalized_axes(ctx, node)
    inverse = inverse_scale(ctx, node, axes, centered=True)
    x_hat = b.op("Mul", [b.op("Sub", [x, b.reduce("ReduceMean", x, axes, hint="g_ln_mean")], "g_ln_centered"), inverse],
                 "g_ln_xhat")
    gw = _scale_gradient(ctx, node, g)
    inner = b.op("Sub", [b.op("Sub", [gw, b.reduce("ReduceMean", gw, axes, hint="g_ln_gmean")], "g_ln_gc"),
                         b.op("Mul", [x_hat, b.reduce("ReduceMean", b.op("Mul", [gw, x_hat], "g_ln_gx"), axes,
                                                      hint="g_ln_gxmean")], "g_ln_proj")], "g_ln_inner")
    return [(x, b.op("Mul", [inner, inverse], "g_ln"))]


@vjp("RMSNormalization")
@vjp("RMSNormalization", domain=PRIVATE_DOMAIN)
def rms_norm(ctx, node, g):
    """With r = 1 / rms(x) and g = G * w: r g - r^3 x mean(g x)."""
    b, x = ctx.builder, node.input[0]
    axes = normalized_axes(ctx, node)
    r = inverse_scale(ctx, node, axes, centered=False)
    gw = _scale_gradient(ctx, node, g)
    projection = b.op("Mul", [b.op("Mul", [x, b.op("Mul", [r, b.op("Mul", [r, r], "g_rms_r2")], "g_rms_r3")], "g_rms_xr3"),
                      b.reduce("ReduceMean", b.op("Mul", [gw, x], "g_rms_gx"), axes, hint="g_rms_gxmean")], "g_rms_proj")
    return [(x, b.op("Sub", [b.op("Mul", [gw, r], "g_rms_gr"), projection], "g_rms"))]


@vjp("LpNormalization")
def lp_norm(ctx, node, g):
    """y = x / n, n = ||x||_p over one axis: G_x = (G - dn/dx sum(G y)) / n, with dn/dx = y
    for p = 2 and sign(x) for p = 1."""
    b, x, y = ctx.builder, node.input[0], node.output[0]
    attrs = attributes(node)
    axis, p = attrs.get("axis", -1), attrs.get("p", 2)
    norm = b.reduce("ReduceL2" if p == 2 else "ReduceL1", x, [axis], hint="g_lp_norm")
    along = y if p == 2 else b.op("Sign", [x], "g_lp_sign")
    projection = b.op("Mul", [along, b.reduce("ReduceSum", b.op("Mul", [g, y], "g_lp_gy"), [axis], hint="g_lp_gysum")],
                      "g_lp_proj")
    return [(x, b.op("Div", [b.op("Sub", [g, projection], "g_lp_inner"), norm], "g_lp"))]


@vjp("LRN")
def lrn(ctx, node, g):
    """y_c = x_c D_c^-beta: G_x = G d - (2 alpha beta / size) x window^T(G x d / D) (d = D^-beta)."""
    b, x = ctx.builder, node.input[0]
    attrs = attributes(node)
    denominator, d = lrn_denominator(ctx, node)
    inner = b.op("Div", [b.op("Mul", [b.op("Mul", [g, x], "g_lrn_gx"), d], "g_lrn_gxd"), denominator], "g_lrn_inner")
    spread = lrn_window_sum(ctx, node, inner, transposed=True)
    factor = b.const(2 * attrs.get("alpha", 1e-4) * attrs.get("beta", 0.75) / int(attrs["size"]))
    cross = b.op("Mul", [b.op("Mul", [x, spread], "g_lrn_xs"), factor], "g_lrn_cross")
    return [(x, b.op("Sub", [b.op("Mul", [g, d], "g_lrn_gd"), cross], "g_lrn"))]


def supported() -> Tuple[str, ...]:
    return tuple(sorted(key_name(key) for key in GRADIENT_HANDLERS))
