"""Ops that merge several tensors into one: the relevance is split back to each input."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .linear import attributes
from .registry import register


@register("Concat", family="merge")
def concat(ctx, node, rule, relevance):
    """R is cut along the concatenation axis into the inputs' extents (Split)."""
    rank = len(ctx.graph.shape(node.output[0]))
    axis = attributes(node)["axis"] % rank
    sizes = [ctx.graph.shape(name)[axis] for name in node.input]
    if axis == 0 or not all(isinstance(s, int) for s in sizes):
        raise ModelError(f"Concat {node.name!r} joins along axis {axis}; relevance can be split back only "
                         f"along an axis of static size other than the batch axis")
    b = ctx.builder
    parts = b.op("Split", [relevance[node.output[0]], b.const(sizes, "split", np.int64)], "r_split",
                 outputs=len(sizes), axis=axis)
    parts = [parts] if len(sizes) == 1 else parts
    return list(zip(node.input, parts))
