"""Pass: bring every Gemm with a constant weight to the canonical Y = A @ W^T + C.

Canonical means transA=0, alpha=1, beta=1 and transB=1 with W of shape (N, K): the layout
PyTorch exports, so the common case costs nothing; the other layouts are rewritten once here.
"""
import numpy as np
import onnx
from onnx import helper

from ._graph import add_initializer, constant_value, remove_unused_initializers

CANONICAL = {"transA": 0, "transB": 1, "alpha": 1.0, "beta": 1.0}


def gemm_attributes(node: onnx.NodeProto) -> dict:
    """alpha, beta, transA, transB with ONNX's defaults filled in."""
    given = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {"transA": 0, "transB": 0, "alpha": 1.0, "beta": 1.0, **given}


def is_canonical(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gemm" and gemm_attributes(node) == CANONICAL


def normalize_gemm(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers. Ensures each Gemm whose B is constant is canonical
    (see module doc): alpha and transB are folded into a new W, beta into a new C (a Mul when
    C is not constant), transA becomes a Transpose before it. A Gemm of two activations is
    left alone (its handler reports it)."""
    graph = model.graph
    new_nodes, changed = [], False
    for node in graph.node:
        weight = constant_value(graph, node.input[1]) if node.op_type == "Gemm" else None
        if weight is None or is_canonical(node):
            new_nodes.append(node)
            continue
        attrs = gemm_attributes(node)
        if attrs["transA"]:
            transposed = node.input[0] + "_T"
            new_nodes.append(helper.make_node("Transpose", [node.input[0]], [transposed], name=node.name + "_transA", perm=[1, 0]))
            node.input[0] = transposed
        if attrs["alpha"] != 1.0 or not attrs["transB"]:
            weight = (weight if attrs["transB"] else weight.T) * np.asarray(attrs["alpha"], weight.dtype)
            node.input[1] = add_initializer(graph, weight, node.name + "_W")
        if len(node.input) > 2 and node.input[2] and attrs["beta"] != 1.0:
            bias = constant_value(graph, node.input[2])
            if bias is not None:
                node.input[2] = add_initializer(graph, bias * np.asarray(attrs["beta"], bias.dtype), node.name + "_C")
            else:
                beta = add_initializer(graph, np.asarray(attrs["beta"], weight.dtype), node.name + "_beta")
                scaled = node.input[2] + "_beta"
                new_nodes.append(helper.make_node("Mul", [node.input[2], beta], [scaled], name=node.name + "_beta"))
                node.input[2] = scaled
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("transB", 1))
        new_nodes.append(node)
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(new_nodes)
        remove_unused_initializers(graph)
    return changed
