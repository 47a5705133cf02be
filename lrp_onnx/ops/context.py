"""The handler API: what every relevance handler may use (DESIGN.md section 8).

compile.py builds one ``Context`` per explainer and drives the handlers with it.
"""
from __future__ import annotations

from typing import Dict, Set

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..builder import GraphBuilder
from ..graph import ModelGraph

#: Ops through which the sign of their input is kept (used to skip zero branches).
_SIGN_KEEPING = {"MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"}


class Context:
    """What a handler may use: the model graph, the builder, the MaxPool mode, and helpers."""

    def __init__(self, graph: ModelGraph, builder: GraphBuilder, maxpool: str,
                 forward_nodes: Dict[str, onnx.NodeProto], carrying: Set[str]):
        self.graph, self.builder, self.maxpool = graph, builder, maxpool
        self.carrying = carrying   # the tensors on the relevance path
        self._forward_nodes = forward_nodes
        self._shapes: Dict[str, str] = {}
        self._nonneg: Dict[str, bool] = {}

    def shape_of(self, tensor: str) -> str:
        """A Shape node of ``tensor`` (one per tensor)."""
        if tensor not in self._shapes:
            self._shapes[tensor] = self.builder.op("Shape", [tensor], "shape")
        return self._shapes[tensor]

    def carries(self, tensor: str) -> bool:
        """True when relevance flows into ``tensor`` (False for constants and side inputs)."""
        return tensor in self.carrying

    def constant_initializer(self, value, hint: str) -> str:
        """A new initializer that rules may read and modify like a model weight."""
        name = self.builder.const(value, hint)
        self.graph.constants[name] = next(t for t in reversed(self.builder.initializers) if t.name == name)
        return name

    def zeros_like(self, tensor: str) -> str:
        """A float zero tensor shaped like ``tensor``."""
        return self.builder.op("ConstantOfShape", [self.shape_of(tensor)], "zeros",
                               value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))

    def unbroadcast(self, relevance: str, result: str, tensor: str) -> str:
        """The relevance of ``result`` (a broadcast of ``tensor``) summed back onto ``tensor``'s
        shape: over the leading axes broadcasting added and the axes it stretched from 1."""
        out_shape, in_shape = self.graph.shape(result), self.graph.shape(tensor)
        lead = len(out_shape) - len(in_shape)
        if lead == 0 and None not in in_shape and in_shape == out_shape:   # the same dims, symbolic ones by name
            return relevance
        b = self.builder
        if not all(isinstance(d, int) for d in in_shape + out_shape[lead:]):   # symbolic sizes: axes found at run time
            return b.op("Reshape", [self._sum_stretched(relevance, result, tensor, lead), self.shape_of(tensor)],
                        "r_unbroadcast")
        axes = list(range(lead)) + [lead + i for i, d in enumerate(in_shape) if d == 1 and out_shape[lead + i] != 1]
        if not axes:
            return relevance
        summed = b.reduce("ReduceSum", relevance, axes, keepdims=1, hint="r_unbroadcast")
        return b.op("Reshape", [summed, self.shape_of(tensor)], "r_unbroadcast")

    def _sum_stretched(self, relevance: str, result: str, tensor: str, lead: int) -> str:
        """ReduceSum of ``relevance`` over the axes where ``tensor``'s shape (padded with
        ``lead`` leading ones) is 1 and ``result``'s is not, computed from Shape at run time."""
        b = self.builder
        padded = b.op("Concat", [b.const([1] * lead, "ones", np.int64), self.shape_of(tensor)], "in_dims", axis=0)
        one = b.const(1, "one", np.int64)
        stretched = b.op("And", [b.op("Equal", [padded, one], "in_one"),
                                 b.op("Not", [b.op("Equal", [self.shape_of(result), one], "out_one")], "out_many")],
                         "stretched")
        axes = b.op("Reshape", [b.op("NonZero", [stretched], "axes"), b.const([-1], "flat", np.int64)], "axes")
        return b.op("ReduceSum", [relevance, axes], "r_unbroadcast", keepdims=1, noop_with_empty_axes=1)

    def nonnegative(self, tensor: str) -> bool:
        """True when ``tensor`` is >= 0 by construction (a ReLU output, possibly pooled or
        reshaped); then the a- branches of a rule are exactly zero and are skipped."""
        if tensor not in self._nonneg:
            producer = self.graph.nodes.get(self.graph.producer.get(tensor, ""))
            if producer is None:
                result = False
            elif producer.op_type == "Relu":
                result = True
            else:
                result = producer.op_type in _SIGN_KEEPING and self.nonnegative(producer.input[0])
            self._nonneg[tensor] = result
        return self._nonneg[tensor]

    def maxpool_indices(self, node: onnx.NodeProto) -> str:
        """The Indices output of a forward MaxPool node (added to the node if it has none)."""
        forward = self._forward_nodes[node.name]
        if len(forward.output) < 2 or not forward.output[1]:
            name = self.builder.fresh("maxpool_indices")
            if len(forward.output) < 2:
                forward.output.append(name)
            else:
                forward.output[1] = name
        return forward.output[1]
