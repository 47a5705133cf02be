"""Softmax inside the graph (family "softmax"; a final Softmax at the output is stripped by
canonicalize/softmax.py). With s = softmax(x) along its axis:

- rules.AttnSoftmax (AttnLRP, Achtibat et al. 2024, Prop. 3.1; LXT's ``softmax``): the Taylor
  decomposition at x with the bias absorbed,

      R_x = x * (R - s * sum_axis R)

  where a logit of -inf (a masked position) counts as 0, as in LXT, so that it gets no
  relevance instead of 0 * inf = NaN. A finite but very negative logit (-3.4e38) has s = 0
  and, behind a bilinear rule (R_A = A * ...), R = 0 there, so it gets 0 too.
- rules.CPConstant (CP-LRP, Ali et al. 2022): the attention probabilities are constants, no
  relevance flows to x (Q K^T gets none).
"""
from __future__ import annotations

from .. import rules as R
from ..errors import CompositeError
from .linear import attributes
from .registry import register


def softmax_axis(ctx, node) -> int:
    """The Softmax axis (default -1 from opset 13, which load.py lifts every model to)."""
    return attributes(node).get("axis", -1) % len(ctx.graph.shape(node.input[0]))


@register("Softmax", family="softmax", data_slots=(0,))
def softmax(ctx, node, rule, relevance):
    """R_x = x * (R - s * sum_axis R), or nothing under CP-LRP (module doc)."""
    if isinstance(rule, R.CPConstant):
        return []
    if not isinstance(rule, R.AttnSoftmax):
        raise CompositeError(f"Softmax {node.name!r} (family 'softmax') takes AttnSoftmax or CPConstant, not {rule}")
    b = ctx.builder
    x, s = node.input[0], node.output[0]
    r = relevance[s]
    total = b.reduce("ReduceSum", r, [softmax_axis(ctx, node)], keepdims=1, hint="r_softmax_sum")
    inner = b.op("Sub", [r, b.op("Mul", [s, total], "s_times_sum")], "r_softmax")
    logits = b.op("Where", [b.op("IsInf", [x], "masked", detect_positive=0), b.const(0.0), x], "x_unmasked")
    return [(x, b.op("Mul", [logits, inner], "r_softmax"))]
