"""Products of two activations (family "bilinear"): MatMul and Einsum (attention's Q K^T and
A V) and the element-wise Mul of SwiGLU's act(gate) * up.

AttnLRP's uniform rule (Achtibat et al. 2024, Prop. 3.2 and 3.3; LXT's ``matmul`` and
``mul2``), rules.Uniform: the epsilon-LRP relevance of the product, halved for each factor.
For z = a b (contracted over k):

    R_a = a * ((R / stab(2 z)) b^T)        R_b = b * (a^T (R / stab(2 z)))

summed back over broadcast batch axes (Einsum: the same with the equation's index maps).
Element-wise y = a * b: R_a = R_b = R / 2.

CP-LRP (Ali et al. 2022), rules.CPConstant: a factor that is an attention probability (a
Softmax output, through shape ops) or an activated gate (an activation's output: SiLU(g) in
SwiGLU) is a constant weight, and the other factor takes everything by the epsilon rule:
R_v = v * (A^T (R / stab(z))), element-wise R_up = R. A product with no such factor, or one
whose other factor carries no relevance, takes the uniform rule.

A factor that is not on the relevance path (computed from constants) is a constant weight: the
other factor gets the epsilon rule, R_a = a * ((R / stab(z)) b^T). Under the Gradient rule
(ops/gradient.py) the same contractions give the vector-Jacobian products G b^T and a^T G.
"""
from __future__ import annotations

import re
from typing import List, Tuple

from onnx import helper

from .. import rules as R
from ..errors import CompositeError, ModelError
from .elementwise import ACTIVATIONS
from .propagate import stabilize
from .registry import register

#: Ops that only move elements: a Softmax output stays an attention probability through them.
_MOVING = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Identity", "Expand", "Slice",
           "Gather", "Split", "Concat"}


def _producer(graph, tensor: str):
    return graph.nodes.get(graph.producer.get(tensor, ""))


def is_softmax_output(graph, tensor: str) -> bool:
    """``tensor`` is a Softmax output, possibly moved by shape ops (an attention matrix)."""
    for _ in range(16):
        node = _producer(graph, tensor)
        if node is None:
            return False
        if node.op_type == "Softmax":
            return True
        if node.op_type not in _MOVING:
            return False
        tensor = node.input[0]
    return False


def is_activated(graph, tensor: str, gated) -> bool:
    """``tensor`` is an activation's output: an element-wise activation op (ops/elementwise.py),
    or a product of a signal and its gate (SiLU x * sigmoid(x), GELU x * (1 + erf(x / sqrt 2)) / 2,
    recognised by ``gated``, arithmetic's gate test), possibly scaled by constants."""
    node = _producer(graph, tensor)
    while node is not None and node.op_type in ("Mul", "Div") and any(t in graph.constants for t in node.input):
        tensor = next(t for t in node.input if t not in graph.constants)
        node = _producer(graph, tensor)
    if node is None:
        return False
    return node.op_type in ACTIVATIONS or (node.op_type == "Mul" and gated(node))


def _check_rule(node, rule) -> None:
    if not isinstance(rule, (R.Uniform, R.CPConstant, R.Gradient)):
        raise CompositeError(f"{node.op_type} {node.name!r} multiplies two activations (family 'bilinear'): it takes "
                             f"Uniform or CPConstant, not {rule}")


def _shares(ctx, rule, factors: Tuple[str, str], constant_factor) -> Tuple[List[str], float]:
    """The factors that take relevance and the multiple k of z in stab(k z): 2 for the uniform
    rule, 1 where one factor is a constant (not on the path, or held by CP-LRP)."""
    taking = [t for t in factors if ctx.carries(t)]
    if isinstance(rule, R.CPConstant) and len(taking) == 2 and factors[0] != factors[1]:
        held = [t for t in factors if constant_factor(t)]
        if len(held) == 1:
            taking = [t for t in factors if t not in held]
    return taking, float(len(taking))


def _normalized(ctx, rule, relevance: str, z: str, k: float, rank: int) -> str:
    """s = R / stab(k z) (the Gradient rule: G itself), as (1 / k) * (R / stab'(z)) with stab' of
    epsilon / k: equal for k a power of two (scaling by 2 commutes with rounding), and the Mul by
    the scalar 1 / k before a MatMul is fused into it by onnxruntime (FusedMatMul's alpha), where
    the Mul k z was a pass over z."""
    if isinstance(rule, R.Gradient):
        return relevance
    b = ctx.builder
    denominator = stabilize(b, z, R.Stabilizer(rule.epsilon / k, 0.0, rule.signed), rank)
    s = b.op("Div", [relevance, denominator], "s_bilinear")
    if denominator == z:   # no stabilizer: 0/0 := 0 where z vanishes (as propagate_linear)
        s = b.op("Where", [b.op("Equal", [z, b.const(0.0)], "z_zero"), b.const(0.0), s], "s_bilinear")
    return s if k == 1.0 else b.op("Mul", [s, b.const(1.0 / k)], "s_bilinear")


def _times(ctx, rule, factor: str, c: str) -> str:
    return c if isinstance(rule, R.Gradient) else ctx.builder.op("Mul", [factor, c], "r_bilinear")


def _sum_batch(ctx, c: str, tensor: str, out_shape) -> str:
    """``c`` (broadcast batch axes of the MatMul output, the last two of ``tensor``) summed
    back onto ``tensor``'s batch axes."""
    in_shape = ctx.graph.shape(tensor)
    lead = len(out_shape) - len(in_shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(in_shape[:-2]) if d == 1 and out_shape[lead + i] != 1]
    if not axes:
        return c
    b = ctx.builder
    return b.op("Reshape", [b.reduce("ReduceSum", c, axes, keepdims=1, hint="r_batch"), ctx.shape_of(tensor)], "r_batch")


def _swap_last(ctx, tensor: str) -> str:
    rank = len(ctx.graph.shape(tensor))
    return ctx.builder.op("Transpose", [tensor], "swap", perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def matmul(ctx, node, rule, relevance):
    """MatMul(a, b) of two activations (ops/linear.py delegates here): the uniform rule."""
    _check_rule(node, rule)
    a, bb = node.input[0], node.input[1]
    z = node.output[0]
    if min(len(ctx.graph.shape(a)), len(ctx.graph.shape(bb))) < 2:
        raise ModelError(f"MatMul {node.name!r} has a 1-D operand; the bilinear rule needs matrices (rank >= 2)")
    taking, k = _shares(ctx, rule, (a, bb), lambda t: is_softmax_output(ctx.graph, t))
    out_shape = ctx.graph.shape(z)
    s = _normalized(ctx, rule, relevance[z], z, k, len(out_shape))
    b = ctx.builder
    result = []
    if a in taking:
        c = _sum_batch(ctx, b.op("MatMul", [s, _swap_last(ctx, bb)], "c_a"), a, out_shape)
        result.append((a, _times(ctx, rule, a, c)))
    if bb in taking:
        c = _sum_batch(ctx, b.op("MatMul", [_swap_last(ctx, a), s], "c_b"), bb, out_shape)
        result.append((bb, _times(ctx, rule, bb, c)))
    return result


def _parse_einsum(node) -> Tuple[List[str], str]:
    """The operands' and the output's index strings of a two-operand Einsum, with "..." kept as
    one symbol ("."); an implicit output follows numpy's convention; anything else the handler
    cannot invert is a clear error naming the equation."""
    equation = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "equation")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    unsupported = ModelError(
        f"Einsum {node.name!r} has the equation {equation!r}; lrp_onnx explains two-operand Einsums whose every "
        f"index of an operand is in the other operand or the output, none repeated within a term (as attention's "
        f"'bhqd,bhkd->bhqk', 'bhqk,bhkd->bhqd', '...ij,...jk->...ik')")
    left, arrow, out = equation.partition("->")
    terms = left.split(",")
    if len(terms) != 2:
        raise unsupported
    terms = [t.replace("...", ".") for t in terms]
    if not arrow:   # implicit output: the indices that occur once, alphabetically (after the ellipsis)
        letters = "".join(terms).replace(".", "")
        out = ("." if any("." in t for t in terms) else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    out = out.replace("...", ".")
    for term in terms + [out]:
        if not re.fullmatch(r"[A-Za-z.]*", term) or len(set(term)) != len(term):
            raise unsupported
    for i, term in enumerate(terms):
        other = terms[1 - i]
        if any(c not in other and c not in out for c in term if c != "."):
            raise unsupported
    return terms, out


@register("Einsum", family="bilinear")
def einsum(ctx, node, rule, relevance):
    """Einsum(a, b) of two activations: the uniform rule with the equation's contractions,
    c_a = einsum(out, b -> a)(s, b). An ellipsis must cover the same axes in every term (no
    broadcasting of its axes)."""
    _check_rule(node, rule)
    a, bb = node.input[0], node.input[1]
    z = node.output[0]
    terms, out = _parse_einsum(node)
    # axis 0 is the batch axis of every term (its symbolic names differ; the sizes agree)
    shapes = {key: ("N",) + tuple(ctx.graph.shape(t)[1:]) for key, t in (("a", a), ("b", bb), ("out", z))}
    spans = [tuple(shape[term.index("."):len(shape) - (len(term) - term.index(".") - 1)])
             for term, shape in zip(terms + [out], shapes.values()) if "." in term]
    if spans and (len(spans) != 3 or len(set(spans)) != 1):
        raise ModelError(f"Einsum {node.name!r}: its ellipsis covers different axes in its terms {spans}; lrp_onnx "
                         f"needs the same axes in both operands and the output")
    taking, k = _shares(ctx, rule, (a, bb), lambda t: is_softmax_output(ctx.graph, t))
    s = _normalized(ctx, rule, relevance[z], z, k, len(shapes["out"]))
    b = ctx.builder
    result = []
    for tensor, mine, other, other_term in ((a, terms[0], bb, terms[1]), (bb, terms[1], a, terms[0])):
        if tensor in taking:
            c = b.op("Einsum", [s, other], "c_einsum", equation=f"{out},{other_term}->{mine}".replace(".", "..."))
            result.append((tensor, _times(ctx, rule, tensor, c)))
    return result


def elementwise(ctx, node, rule, relevance, gated) -> list:
    """Mul(a, b) of two activations, neither a gate (ops/arithmetic.py delegates here):
    R_a = R_b = R / 2 (uniform), or under CP-LRP all of R to the factor that is not an
    activated gate."""
    _check_rule(node, rule)
    a, bb = node.input[0], node.input[1]
    y = node.output[0]
    taking, k = _shares(ctx, rule, (a, bb), lambda t: is_activated(ctx.graph, t, gated))
    share = relevance[y]
    if k == 2.0:
        share = ctx.builder.op("Mul", [share, ctx.builder.const(0.5)], "r_half")
    return [(t, ctx.unbroadcast(share, y, t)) for t in taking]
