"""Pass: rewrite InstanceNormalization and GroupNormalization as LayerNormalization.

GroupNorm with G groups on x of shape (N, C, *S) normalizes each sample's group of C/G channels
(Wu and He 2018, eq. 1-3): y = gamma_c (x - mu_g) / sqrt(var_g + eps) + beta_c; InstanceNorm is
GroupNorm with G = C (Ulyanov et al. 2016). Both become the form ops/normalization.py explains
(the standard deviation a constant of the sample, as LXT's LayerNorm rule):

    n = LayerNormalization(Reshape(x, [0, G, -1]), 1, 0, axis=2, epsilon)
    y = Reshape(Add(Mul(Reshape(n, [0, P, -1]), gamma), beta), Shape(x))     (gamma, beta: (P, 1))

with P = C parameters per channel (InstanceNorm, GroupNormalization-21) or P = G per group
(GroupNormalization-18, opset 18 to 20; then n is already in that layout). The affine cannot
live inside the LayerNormalization (its scale is shared by every group), so it follows as Mul
and Add by constants, whose handlers give the fused rule's relevance: with s = R / y,
R_x = x (gamma s - mean_g(gamma s)) / sigma_g, the bias absorbed (ops/normalization.py's module
doc; the two stabilizers differ by O(eps)). A Mul by ones or an Add of zeros is left out. The
LayerNormalization's unit scale and zero bias have one element (broadcast, as onnxruntime and
the norm handler take them), and nothing here needs a static or inferred shape: the pass may run
before shape inference, which onnx does not do for GroupNormalization-21 (and onnx's checker
calls version 18 deprecated). Parameters computed at run time leave the node as it is (the
compiler then refuses it, naming it).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper

from ._graph import add_initializer, constant_value, fresh_name, remove_unused_initializers
from .private import default_opset


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _rewrite(graph: onnx.GraphProto, node: onnx.NodeProto, opset: int) -> Optional[list]:
    """The nodes replacing ``node``, or None when its parameters are not constants."""
    scale, bias = (constant_value(graph, name) for name in node.input[1:3])
    if scale is None or bias is None or scale.size != bias.size:
        return None
    rows = scale.size   # the parameters: one per row of the (N, rows, -1) layout
    groups = rows if node.op_type == "InstanceNormalization" else int(_attribute(node, "num_groups", 0))
    if groups <= 0 or rows % groups or (node.op_type == "GroupNormalization" and opset < 21 and rows != groups):
        return None
    name, x, y = node.name, node.input[0], node.output[0]
    const = lambda value, hint: add_initializer(graph, np.asarray(value), f"{name}_{hint}")  # noqa: E731
    tmp = lambda hint: fresh_name(graph, f"{name}_{hint}")  # noqa: E731
    grouped, normalized = tmp("grouped"), tmp("normalized")
    nodes = [
        helper.make_node("Reshape", [x, const(np.array([0, groups, -1], np.int64), "groups")], [grouped],
                         name=f"{name}_group"),
        helper.make_node("LayerNormalization", [grouped, const(np.ones(1, np.float32), "ln_scale"),
                                                const(np.zeros(1, np.float32), "ln_bias")],
                         [normalized], name=f"{name}_layernorm", axis=2,
                         epsilon=float(_attribute(node, "epsilon", 1e-5))),
    ]
    current = normalized
    if rows != groups:
        nodes.append(helper.make_node("Reshape", [current, const(np.array([0, rows, -1], np.int64), "rows")],
                                      [tmp("per_channel")], name=f"{name}_rows"))
        current = nodes[-1].output[0]
    for op, value, neutral in (("Mul", scale, 1.0), ("Add", bias, 0.0)):
        if np.any(value != neutral):
            nodes.append(helper.make_node(op, [current, const(value.astype(np.float32).reshape(rows, 1), op.lower())],
                                          [tmp(op.lower())], name=f"{name}_{op.lower()}"))
            current = nodes[-1].output[0]
    shape = tmp("shape")
    nodes += [helper.make_node("Shape", [x], [shape], name=f"{name}_shape"),
              helper.make_node("Reshape", [current, shape], [y], name=f"{name}_ungroup")]
    return nodes


def normalize_groups(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers and opset >= 17 (load.py's minimum), not shape
    inference. Ensures every ONNX-domain InstanceNormalization and GroupNormalization with
    constant parameters is the LayerNormalization form of the module doc."""
    graph, opset, changed = model.graph, default_opset(model), False
    for node in [n for n in graph.node if n.op_type in ("InstanceNormalization", "GroupNormalization")
                 and n.domain in ("", "ai.onnx")]:
        nodes = _rewrite(graph, node, opset)
        if nodes is None:
            continue
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for k, new in enumerate(nodes):
            graph.node.insert(index + k, new)
        changed = True
    if changed:
        remove_unused_initializers(graph)
    return changed
