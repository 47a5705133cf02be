"""Pass: write a GlobalAveragePool of a rank-3 tensor as the ReduceMean over its last axis.

tf2onnx's global_pool_optimizer turns every ReduceMean over the axes 2.. into a
GlobalAveragePool, on a (N, T, D) tensor also the mean and the variance of a Keras
LayerNormalization over D. The two ops compute the same function, y[n, t, 0] = mean_d x[n, t, d],
and are the same layer for relevance (family "avgpool": the linear rule with weights 1 / D), so
the ReduceMean, the form ``fuse_layernorm`` reads, is the one kept.
"""
import numpy as np
import onnx
from onnx import helper

from ._graph import add_initializer, rank_of


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def global_pool_to_reduce_mean(model: onnx.ModelProto) -> bool:
    """Requires shape inference (ranks); runs before ``fuse_layernorm``. Ensures no
    GlobalAveragePool of a rank-3 tensor remains: each is ReduceMean(axes=[2], keepdims=1)
    (the axes an attribute below opset 18, an input from 18 on)."""
    graph, changed = model.graph, False
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "GlobalAveragePool" or node.domain not in ("", "ai.onnx") or rank_of(graph, node.input[0]) != 3:
            continue
        if _opset(model) < 18:
            mean = helper.make_node("ReduceMean", [node.input[0]], list(node.output), name=node.name, axes=[2], keepdims=1)
        else:
            axes = add_initializer(graph, np.array([2], np.int64), node.name + "_axes")
            mean = helper.make_node("ReduceMean", [node.input[0], axes], list(node.output), name=node.name, keepdims=1)
        graph.node.remove(node)
        graph.node.insert(index, mean)
        changed = True
    return changed
