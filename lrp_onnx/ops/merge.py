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
    if axis == 0:
        raise ModelError(f"Concat {node.name!r} joins along axis 0, the batch axis; relevance is explained per sample")
    b = ctx.builder
    if all(isinstance(s, int) for s in sizes):
        split = b.const(sizes, "split", np.int64)
    else:   # a size shape inference left open (a class token expanded to a computed shape): read it at run time
        split = b.op("Concat", [b.op("Slice", [ctx.shape_of(name), b.const([axis], "axis", np.int64),
                                               b.const([axis + 1], "axis_end", np.int64)], "size") for name in node.input],
                     "split", axis=0)
    parts = b.op("Split", [relevance[node.output[0]], split], "r_split", outputs=len(sizes), axis=axis)
    parts = [parts] if len(sizes) == 1 else parts
    return list(zip(node.input, parts))
