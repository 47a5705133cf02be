"""Small pattern-matching helpers for the passes that fuse decomposed normalizations and
activations (layernorm.py, rmsnorm.py, gelu.py, hardswish.py, softmax_decomposed.py): follow a
tensor to its only consumer, read constant scalars and reduction axes, and replace each match by
one fused node (``fuse_matches``)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from ._graph import constant_value, consumers, output_names, producers, rank_of


class Chain:
    """Lookups of one graph for a matcher: who makes and who uses a tensor, constants, ranks
    (rebuild it after changing the graph)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph, self.uses, self.outputs = graph, consumers(graph), output_names(graph)
        self.made_by = producers(graph)

    def only_use(self, tensor: str, op_types, count: int = 1) -> Optional[onnx.NodeProto]:
        """The one node (of ``op_types``) that reads ``tensor``, ``count`` times (2 for
        Mul(d, d)); None when another node reads it or it is a graph output."""
        users = self.uses.get(tensor, [])
        if tensor in self.outputs or len(users) != count or len({id(n) for n, _ in users}) != 1:
            return None
        node = users[0][0]
        return node if node.op_type in op_types else None

    def scalar(self, name: str) -> Optional[float]:
        value = constant_value(self.graph, name)
        return None if value is None or value.size != 1 else float(value.reshape(()))

    def other(self, node: onnx.NodeProto, tensor: str) -> Optional[str]:
        """The input of a two-input node that is not ``tensor``."""
        rest = [name for name in node.input if name != tensor]
        return rest[0] if len(rest) == 1 and len(node.input) == 2 else None

    def square_of(self, tensor: str) -> Optional[onnx.NodeProto]:
        """Pow(t, 2) or Mul(t, t) among the users of ``tensor``."""
        for node, slot in self.uses.get(tensor, []):
            if node.op_type == "Pow" and slot == 0 and self.scalar(node.input[1]) == 2.0:
                return node
            if node.op_type == "Mul" and list(node.input) == [tensor, tensor]:
                return node
        return None

    def trailing_axes(self, node: onnx.NodeProto) -> Optional[int]:
        """The first axis of a ReduceMean (keepdims=1) over the trailing axes [k, rank), or None."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keepdims", 1) != 1:
            return None
        if "axes" in attrs:
            axes = list(attrs["axes"])
        elif len(node.input) > 1 and node.input[1]:
            value = constant_value(self.graph, node.input[1])
            if value is None:
                return None
            axes = value.reshape(-1).tolist()
        else:
            return None
        rank = rank_of(self.graph, node.input[0])
        if rank is None or not axes:
            return None
        axes = sorted(int(a) % rank for a in axes)
        return axes[0] if axes == list(range(axes[0], rank)) and axes[0] > 0 else None

    def affine_after(self, tensor: str, shape: Tuple[int, ...]) -> Tuple[str, Optional[np.ndarray], Optional[np.ndarray], List]:
        """An optional Mul by a constant w and then an optional Add of a constant b after
        ``tensor``, whose values broadcast within the normalized ``shape`` (the trailing axes):
        (last tensor, w or None, b or None, the nodes absorbed)."""
        absorbed, values = [], {}
        for op_type in ("Mul", "Add"):
            node = self.only_use(tensor, (op_type,))
            if node is None:
                continue
            other = self.other(node, tensor)
            value = (None if other is None else
                     trailing_constant(constant_value(self.graph, other), shape, rank_of(self.graph, tensor)))
            if value is None:
                break
            values[op_type] = value
            absorbed.append(node)
            tensor = node.output[0]
        return tensor, values.get("Mul"), values.get("Add"), absorbed


def trailing_constant(value: Optional[np.ndarray], shape: Tuple[int, ...], rank: Optional[int] = None) -> Optional[np.ndarray]:
    """A constant that broadcasts within the trailing ``shape`` of a tensor of ``rank`` (leading
    axes of size 1 allowed up to that rank, one if it is unknown: Keras writes a sequence
    LayerNorm's gamma as (1, 1, D)), broadcast to it; None for no constant or one that does not."""
    if value is None or value.ndim > (len(shape) + 1 if rank is None else rank):
        return None
    while value.ndim > len(shape) and value.shape[0] == 1:
        value = value[0]
    if value.ndim > len(shape):
        return None
    try:
        return np.broadcast_to(value.reshape(value.shape[-len(shape):] if value.ndim else ()), shape)
    except ValueError:
        return None


def static_trailing_shape(graph: onnx.GraphProto, tensor: str, first_axis: int) -> Optional[Tuple[int, ...]]:
    """The static dims of ``tensor`` from ``first_axis`` on (shape inference), or None."""
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim[first_axis:]
            if all(d.HasField("dim_value") for d in dims):
                return tuple(d.dim_value for d in dims)
    return None


def remove(graph: onnx.GraphProto, nodes) -> None:
    for node in nodes:
        graph.node.remove(node)


def fuse_matches(graph: onnx.GraphProto, anchor_op: str, match: Callable,
                 build: Callable[[onnx.NodeProto, tuple], Optional[Tuple[onnx.NodeProto, Sequence]]]) -> bool:
    """For each ONNX-domain node of type ``anchor_op`` that ``match(chain, anchor)`` accepts,
    ``build(anchor, found)`` gives (the fused node, the matched nodes it replaces) or None to
    leave it; the fused node goes where the last matched node was. True when anything fused."""
    chain, fused = Chain(graph), False
    for anchor in [n for n in graph.node if n.op_type == anchor_op and n.domain in ("", "ai.onnx")]:
        found = match(chain, anchor)
        replacement = None if found is None else build(anchor, found)
        if replacement is None:
            continue
        node, matched = replacement
        graph.node.insert(list(graph.node).index(matched[-1]), node)
        remove(graph, matched)
        chain, fused = Chain(graph), True
    return fused
