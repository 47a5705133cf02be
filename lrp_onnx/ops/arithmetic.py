"""Element-wise arithmetic: sums (residual connections, biases), scaling, and gates.

Sums split the relevance in proportion to each summand (the overview's z-rule on a layer whose
weights are all 1, section 10.2; zennit's Norm rule for its ResNet canonizer's Sum):

    R_i = x_i / stab(sum_j x_j) * R,    stab(z) = z + epsilon * sgn(z),  sgn(0) = +1

The stabilizer is the rule of the node's family "sum": Epsilon(SUM_EPSILON), zennit's Norm, unless
a predicate such as ``Family("sum")`` gives another LRP0 or Epsilon (LXT has none: 1e-12).
A summand that is not on the relevance path (a constant bias, a side input) keeps its share:
it is absorbed, like a bias in the epsilon rule. Broadcast summands get their relevance summed
back over the broadcast axes.

Mul/Div by a constant and Neg scale every contribution alike, so relevance passes unchanged.
A product of an activation and a *gate* (a Sigmoid/HardSigmoid/Erf/Tanh output, possibly shifted or
scaled by constants: squeeze-excitation, SiLU = x * Sigmoid(x), GELU = x * (1 + Erf(x/sqrt 2)) / 2)
gives all relevance to the gated signal and none to the gate, as the gate only modulates how
much of the signal passes (the treatment of gates in LRP for LSTMs, Arras et al. 2017, and of
SiLU/GELU as activations in AttnLRP, Achtibat et al. 2024). A product of two activations
neither of which is a gate (SwiGLU's act(gate) * up) takes the bilinear rule (family
"bilinear", ops/bilinear.py: R/2 to each, or all to up under CP-LRP).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..errors import CompositeError, ModelError
from ..rules import LRP0, Epsilon, Stabilizer
from . import bilinear
from .propagate import stabilize
from .registry import register

#: The stabilizer of the proportional split of sums by default (zennit's Norm): the family
#: "sum"'s default rule is Epsilon(SUM_EPSILON) (composites.UNCOUNTED_FAMILIES).
SUM_EPSILON = 1e-6

#: Ops whose output is a gate in (0, 1) or (-1, 1) ...
GATE_OPS = {"Sigmoid", "HardSigmoid", "Erf", "Tanh"}
#: ... and the element-wise ops with a constant operand that keep it one (1 + erf, 0.5 * gate).
_GATE_PRESERVING = {"Add", "Sub", "Mul", "Div"}


def _signed_terms(ctx, node) -> List[Tuple[str, bool]]:
    """(summand, negated) for Add, Sub and Sum."""
    if node.op_type == "Sub":
        return [(node.input[0], False), (node.input[1], True)]
    return [(name, False) for name in node.input]


def sum_stabilizer(node, rule) -> Stabilizer:
    """The stabilizer of a sum's rule, LRP0 or Epsilon (their one branch is the layer itself)."""
    if not isinstance(rule, (LRP0, Epsilon)) or rule.zero_bias:
        raise CompositeError(f"{node.op_type} {node.name!r} is a sum (family 'sum'): its rule gives the stabilizer "
                             f"of the proportional split, LRP0 or Epsilon without zero_bias, not {rule}; put "
                             f"(Family('sum'), Epsilon(...)) before the predicate that matched it")
    (term,) = rule.terms()
    return term.stabilizer


@register("Add", "Sub", "Sum", family="sum")
def proportional_split(ctx, node, rule, relevance):
    """R_i = (+-x_i) / stab(y) * R for every summand on the relevance path (y: the node's
    output; stab: the rule's stabilizer, propagate.stabilize; 0/0 := 0 without one)."""
    b = ctx.builder
    y = node.output[0]
    stabilized = stabilize(b, y, sum_stabilizer(node, rule), len(ctx.graph.shape(y)))
    s = b.op("Div", [relevance[y], stabilized], "s_sum")
    if stabilized == y:
        s = b.op("Where", [b.op("Equal", [y, b.const(0.0)], "y_zero"), b.const(0.0), s], "s_sum")
    result = []
    for name, negated in _signed_terms(ctx, node):
        if not ctx.carries(name):
            continue
        share = b.op("Mul", [name, s], "r_summand")
        if negated:
            share = b.op("Neg", [share], "r_summand")
        result.append((name, ctx.unbroadcast(share, y, name)))
    return result


def gate_source(graph, tensor: str) -> Optional[str]:
    """The gate op a tensor comes from (through element-wise ops with a constant operand), or None."""
    for _ in range(8):   # 1 + erf(x) * 0.5 and the like are a few steps deep at most
        producer = graph.nodes.get(graph.producer.get(tensor, ""))
        if producer is None:
            return None
        if producer.op_type in GATE_OPS:
            return producer.op_type
        if producer.op_type not in _GATE_PRESERVING:
            return None
        varying = [name for name in producer.input if name not in graph.constants]
        if len(varying) != 1:
            return None
        tensor = varying[0]
    return None


def is_gated(graph, node) -> bool:
    """A Mul of a signal and exactly one gate (SiLU x * sigmoid(x), GELU's x * (1 + erf) / 2)."""
    return sum(gate_source(graph, name) is not None for name in node.input[:2] if name not in graph.constants) == 1


@register("Mul", "Div", family="scale")
def scale_or_gate(ctx, node, rule, relevance):
    """x * c, x / c: R_x = R. x * gate(...): R_x = R, the gate gets none (see module doc).
    a * b of two activations, neither a gate: the bilinear rule (ops/bilinear.py)."""
    r, y = relevance[node.output[0]], node.output[0]
    on_path = [name for name in node.input if ctx.carries(name)]
    if node.op_type == "Div" and node.input[1] in on_path:
        raise ModelError(f"Div {node.name!r} divides by an activation ({node.input[1]!r}); only division "
                         f"by a constant passes relevance")
    if len(on_path) == 2 and node.input[0] != node.input[1]:
        gates = [name for name in on_path if gate_source(ctx.graph, name)]
        if not gates:   # a product of two activations (SwiGLU's act(gate) * up): family "bilinear"
            return bilinear.elementwise(ctx, node, rule, relevance, lambda mul: is_gated(ctx.graph, mul))
        if len(gates) == 2:
            raise ModelError(
                f"Mul {node.name!r} multiplies two gates ({node.input[0]!r}, {node.input[1]!r}, both "
                f"{'/'.join(sorted(GATE_OPS))} outputs); lrp_onnx passes relevance through a gated product only "
                f"when exactly one factor is a gate, and through a product of two non-gates by the bilinear rule"
            )
        on_path = [name for name in on_path if name not in gates]
    elif len(on_path) == 2:
        raise ModelError(f"Mul {node.name!r} squares an activation ({node.input[0]!r}); no relevance rule for x*x")
    (signal,) = on_path
    return [(signal, ctx.unbroadcast(r, y, signal))]


@register("Neg", family="scale", data_slots=(0,))
def negate(ctx, node, rule, relevance):
    """y = -x (a Mul by -1, as in Llama's rotary rotate_half): R_x = R."""
    return [(node.input[0], relevance[node.output[0]])]
