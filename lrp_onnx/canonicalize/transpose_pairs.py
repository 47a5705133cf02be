"""Pass: remove Transposes that cancel, and write a flattening Reshape as Flatten.

Layout converters (tf2onnx, jax2onnx, onnx-tf) bracket ops with NHWC <-> NCHW Transposes:

- Transpose(p) -> Transpose(q) is one Transpose of the composed permutation, none when that
  is the identity;
- Transpose(p) -> element-wise ops -> Transpose(p^-1), where each op is unary or has a scalar
  constant as its other operand (so it does not care about the layout), is the element-wise
  ops alone;
- Reshape(x, [0 | N, -1]) or to (N, product of the other sizes) on a tensor of rank >= 3 is
  Flatten(x, axis=1).

Each tensor in between must have no other use and be no graph output. The relevance is the same
either way (a Transpose passes relevance back exactly); the shorter graph is what the ZBox
bounds and the other passes read.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ._graph import constant_value, rank_of
from ._match import Chain, remove

#: Element-wise ops that commute with any Transpose when every other operand is a scalar.
ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid",
               "HardSwish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Clip", "Add", "Sub", "Mul", "Div", "Identity"}


def _perm(node: onnx.NodeProto, rank: int):
    given = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)
    return list(range(rank))[::-1] if given is None else given


def _cancel(chain: Chain, first: onnx.NodeProto):
    """The nodes to drop and the new Transpose (or None) for a pair starting at ``first``."""
    rank = rank_of(chain.graph, first.input[0])
    if rank is None:
        return None
    p, tensor, between = _perm(first, rank), first.output[0], []
    while True:
        node = chain.only_use(tensor, ELEMENTWISE | {"Transpose"})
        if node is None:
            return None
        if node.op_type == "Transpose":
            break
        others = [name for name in node.input[1:] if name] if node.op_type not in ("Add", "Sub", "Mul", "Div") else \
            [chain.other(node, tensor)]
        if any(o is None or constant_value(chain.graph, o) is None or constant_value(chain.graph, o).size != 1 for o in others):
            return None
        between.append(node)
        tensor = node.output[0]
    composed = [p[i] for i in _perm(node, rank)]
    if composed == list(range(rank)):
        return first, between, node, None
    return (first, between, node, helper.make_node("Transpose", [first.input[0]], [node.output[0]], name=first.name + "_merged",
                                                   perm=composed)) if not between else None


def _dims(graph: onnx.GraphProto, tensor: str):
    """The sizes of ``tensor`` from shape inference (None for a dynamic one), or None."""
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return None


def _flatten(chain: Chain, node: onnx.NodeProto):
    """Flatten(axis=1) for a Reshape to (N, -1) or (N, rest), else None."""
    target = constant_value(chain.graph, node.input[1]) if len(node.input) > 1 else None
    shape = _dims(chain.graph, node.input[0])
    if target is None or shape is None or len(shape) < 3 or target.shape != (2,):
        return None
    rest = int(np.prod(shape[1:])) if all(shape[1:]) else None
    first, second = int(target[0]), int(target[1])
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    batch_kept = (first == 0 and not allowzero) or (shape[0] is not None and first == shape[0])
    if not ((batch_kept and second in (-1, rest)) or (first == -1 and rest is not None and second == rest)):
        return None
    return helper.make_node("Flatten", [node.input[0]], [node.output[0]], name=node.name + "_flatten", axis=1)


def cancel_transposes(model: onnx.ModelProto) -> bool:
    """Requires shape inference and constants as initializers. Ensures no Transpose pair of the
    module doc is left and every flattening Reshape of it is a Flatten."""
    graph = model.graph
    chain, changed = Chain(graph), False
    for first in [n for n in graph.node if n.op_type == "Transpose"]:
        found = _cancel(chain, first) if first in graph.node else None
        if found is None or found[2].output[0] in chain.outputs:
            continue
        first, between, last, merged = found
        if merged is not None:
            graph.node.insert(list(graph.node).index(last), merged)
            remove(graph, [first, last])
        else:
            source, out = first.input[0], last.output[0]
            if between:   # the ops now run in the original layout: their recorded shapes are stale
                stale = {n.output[0] for n in between}
                kept = [vi for vi in graph.value_info if vi.name not in stale]
                del graph.value_info[:]
                graph.value_info.extend(kept)
                between[0].input[list(between[0].input).index(first.output[0])] = source
                between[-1].output[0] = out
            else:
                for node in graph.node:
                    node.input[:] = [source if name == out else name for name in node.input]
            remove(graph, [first, last])
        chain, changed = Chain(graph), True
    for node in [n for n in graph.node if n.op_type == "Reshape"]:
        flat = _flatten(chain, node)
        if flat is not None:
            graph.node.insert(list(graph.node).index(node), flat)
            remove(graph, [node])
            changed = True
    return changed
