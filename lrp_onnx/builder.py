"""A small helper that appends ONNX nodes and initializers under unique names."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

PREFIX = "lrp/"


class GraphBuilder:
    """Collects the nodes and initializers of the relevance graph.

    ``opset`` is the default-domain opset of the explainer; ops whose signature changed
    between opsets (the Reduce* family at 18) are emitted in the matching form.
    """

    def __init__(self, opset: int, taken_names: Sequence[str] = ()):
        self.opset = opset
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self._taken = set(taken_names)
        self._counter = 0
        self._constants: Dict[tuple, str] = {}
        self.producer: Dict[str, onnx.NodeProto] = {}   # tensor -> the appended node that makes it
        #: relevance_in -> (tensor_in, relevance_out, tensor_out): see ops.propagate.implies_zeros
        self.implied: Dict[str, tuple] = {}

    def fresh(self, hint: str) -> str:
        """A tensor or node name not used anywhere in the model."""
        while True:
            self._counter += 1
            name = f"{PREFIX}{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], hint: Optional[str] = None, outputs: int = 1, **attrs):
        """Append one node; returns its output name (or list of names when outputs > 1)."""
        hint = hint or op_type
        names = [self.fresh(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.fresh(f"node_{hint}"), **attrs))
        self.producer.update((name, self.nodes[-1]) for name in names)
        return names[0] if outputs == 1 else names

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """An initializer; identical small constants are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._constants[key] = name
        return name

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1, hint: Optional[str] = None) -> str:
        """ReduceMean/ReduceSum/... over ``axes``, in the form of this opset."""
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, [x, self.const(list(axes), "axes", np.int64)], hint, keepdims=keepdims)
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=keepdims)

    def sum(self, names: Sequence[str], hint: str = "sum") -> str:
        """The element-wise sum of one or more tensors."""
        if len(names) == 1:
            return names[0]
        return self.op("Sum", list(names), hint)
