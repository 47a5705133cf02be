"""Gradient mode: the vector-Jacobian products that turn the relevance graph into the gradient
of the explained score (the "gradient" and "gradient_x_input" methods, composites.gradient).

The compile loop is the same; in gradient mode the tensor flowing back is G = d score / d t
(starting from the target mask at the output) and each node's handler comes from
``GRADIENT_HANDLERS`` instead of ``HANDLERS``:

- linear layers (Gemm, MatMul, Conv, pools, Reduce, BatchNormalization) keep their LRP handler:
  under the Gradient rule ``propagate_linear`` returns ``f^T(G; W)``, their VJP;
- MaxPool (winner-take-all: G to each window's arg-max), shape ops and Concat/Split/Slice/Pad
  only move elements: their relevance handler already is their VJP;
- activations, sums and products get their derivative here (Relu: G * (x > 0), ...).

An op without an entry has no VJP in lrp_onnx: compiling a gradient for it is an
UnsupportedOpError naming it, never a silent pass-through.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import onnx

from ..errors import UnsupportedOpError
from .linear import attributes
from .registry import HANDLERS, lookup

#: Ops whose relevance handler is their VJP (under the Gradient rule for the linear layers).
SAME_AS_RELEVANCE = (
    "Gemm", "MatMul", "Conv", "AveragePool", "GlobalAveragePool", "MaxPool", "ReduceMean", "ReduceSum",
    "BatchNormalization",
    "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Concat", "Split", "Slice", "Pad",
)

GRADIENT_HANDLERS: Dict[str, Callable] = {op: HANDLERS[op].propagate for op in SAME_AS_RELEVANCE}


def vjp(*op_types: str):
    """Decorator: ``fn(ctx, node, G_out) -> [(input, G_in)]`` is the VJP of ``op_types``."""

    def wrap(fn):
        for op_type in op_types:
            if op_type in GRADIENT_HANDLERS:
                raise RuntimeError(f"two gradient handlers registered for {op_type}")
            GRADIENT_HANDLERS[op_type] = lambda ctx, node, rule, relevance, fn=fn: fn(ctx, node, relevance[node.output[0]])
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
    """Exact GELU (approximate="none"): G * (Phi(x) + x * phi(x))."""
    approximate = attributes(node).get("approximate", b"none")
    if (approximate.decode() if isinstance(approximate, bytes) else approximate) != "none":
        raise UnsupportedOpError(f"Gelu {node.name!r} with approximate={approximate!r}: only the exact Gelu has a gradient here")
    b, x = ctx.builder, node.input[0]
    cdf = b.op("Mul", [b.op("Add", [b.op("Erf", [b.op("Mul", [x, b.const(1 / math.sqrt(2))], "gelu_s")], "gelu_erf"),
                                    b.const(1.0)], "gelu_1p"), b.const(0.5)], "gelu_cdf")
    pdf = b.op("Mul", [b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x], "x_sq"), b.const(-0.5)], "gelu_e")], "gelu_exp"),
                       b.const(1 / math.sqrt(2 * math.pi))], "gelu_pdf")
    dy = b.op("Add", [cdf, b.op("Mul", [x, pdf], "gelu_xpdf")], "gelu_dy")
    return [(x, b.op("Mul", [g, dy], "g_gelu"))]


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


def supported() -> Tuple[str, ...]:
    return tuple(sorted(GRADIENT_HANDLERS))
