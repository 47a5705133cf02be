"""Element-wise activations: shape-preserving and monotone, so relevance passes unchanged
(the overview, section 10.2: activations are merged into the layer above)."""
from __future__ import annotations

from ..canonicalize.private import DOMAIN as PRIVATE_DOMAIN
from .registry import register

ACTIVATIONS = (
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "Tanh", "Softplus", "Softsign", "Clip", "Gelu", "HardSwish", "Mish", "Erf",
)


@register(*ACTIVATIONS, family="activation", data_slots=(0,))
@register("GeluTanh", family="activation", data_slots=(0,), domain=PRIVATE_DOMAIN)   # canonicalize/gelu.py
def pass_through(ctx, node, rule, relevance):
    """R_in = R_out."""
    return [(node.input[0], relevance[node.output[0]])]
