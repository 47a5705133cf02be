"""The ONNX graph as a networkx DAG, and the part of it that carries relevance.

Nodes of the DAG are ONNX node names plus one node per graph input (``input:<name>``); an
edge producer -> consumer carries ``tensor`` (the tensor name) and ``slot`` (the consumer's
input index), keyed by slot so that ``Add(x, x)`` keeps both edges.

Relevance flows only through *data* inputs (the handler registry says which slots those are:
the shape input of a Reshape is not one). The relevance subgraph is every node on a data path
from the explained input to the explained output; constant and shape subgraphs fall outside.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelError


def input_key(name: str) -> str:
    return f"input:{name}"


@dataclass
class ModelGraph:
    """A canonical, shape-inferred model with the lookups the compiler needs."""

    model: onnx.ModelProto
    dag: nx.MultiDiGraph
    nodes: Dict[str, onnx.NodeProto]
    order: List[str]                      # node names in the model's (topological) order
    producer: Dict[str, str]              # tensor -> node name
    constants: Dict[str, onnx.TensorProto]
    shapes: Dict[str, Tuple]              # tensor -> dims (int or str/None for symbolic)
    elem_types: Dict[str, int]
    data_input: str
    output: str

    def constant(self, name: str) -> Optional[np.ndarray]:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def shape(self, name: str) -> Tuple:
        if name not in self.shapes:
            raise ModelError(f"shape inference found no shape for tensor {name!r}")
        return self.shapes[name]

    def static_shape(self, name: str, from_axis: int = 1) -> Tuple[int, ...]:
        """The dims of ``name`` from ``from_axis`` on, which must be known integers."""
        dims = self.shape(name)[from_axis:]
        if not all(isinstance(d, int) for d in dims):
            raise ModelError(f"tensor {name!r} needs static dimensions after the batch axis, has {self.shape(name)}")
        return tuple(dims)


def _dims(value_info: onnx.ValueInfoProto) -> Optional[Tuple]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)


def build_graph(model: onnx.ModelProto, output: Optional[str] = None) -> ModelGraph:
    """Index a canonical model. ``output`` defaults to the first graph output."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    data_inputs = [i.name for i in graph.input if i.name not in constants]
    if len(data_inputs) != 1:
        raise ModelError(f"lrp_onnx explains models with exactly one data input; this one has {data_inputs}")
    outputs = [o.name for o in graph.output]
    output = output or outputs[0]
    if output not in outputs:
        raise ModelError(f"{output!r} is not an output of the model; outputs: {outputs}")

    shapes, elem_types = {}, {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
        elem_types[vi.name] = vi.type.tensor_type.elem_type
    for t in graph.initializer:
        shapes[t.name], elem_types[t.name] = tuple(t.dims), t.data_type

    dag = nx.MultiDiGraph()
    nodes, order, producer = {}, [], {}
    dag.add_node(input_key(data_inputs[0]), kind="input")
    producer[data_inputs[0]] = input_key(data_inputs[0])
    for node in graph.node:
        if not node.name or node.name in nodes:
            raise ModelError(f"node names must be unique and non-empty (run canonicalize first): {node.name!r}")
        nodes[node.name] = node
        order.append(node.name)
        dag.add_node(node.name, kind="op", op_type=node.op_type)
        for out in node.output:
            if out:
                producer[out] = node.name
    for node in graph.node:
        for slot, tensor in enumerate(node.input):
            if tensor in producer:
                dag.add_edge(producer[tensor], node.name, key=slot, tensor=tensor, slot=slot)
    return ModelGraph(model, dag, nodes, order, producer, constants, shapes, elem_types, data_inputs[0], output)


@dataclass
class RelevanceSubgraph:
    """The nodes (in forward order) and tensors that carry relevance."""

    nodes: List[str]
    tensors: Set[str]


def relevance_subgraph(mg: ModelGraph, data_slots) -> RelevanceSubgraph:
    """Nodes on a data path from the explained input to the explained output.

    ``data_slots(node)`` returns the input slots through which relevance flows."""
    def data_edges(u, v, slot):
        return v in mg.nodes and slot in data_slots(mg.nodes[v])

    forward: Set[str] = set()
    stack = [input_key(mg.data_input)]
    while stack:
        u = stack.pop()
        for _, v, slot in mg.dag.out_edges(u, keys=True):
            if v not in forward and data_edges(u, v, slot):
                forward.add(v)
                stack.append(v)

    if mg.output == mg.data_input:
        raise ModelError("the explained output is the model input itself")
    start = mg.producer.get(mg.output)
    if start not in forward:
        raise ModelError(f"the output {mg.output!r} does not depend on the input {mg.data_input!r}")
    backward: Set[str] = {start}
    stack = [start]
    while stack:
        v = stack.pop()
        for u, _, slot in mg.dag.in_edges(v, keys=True):
            if u in forward and u not in backward and data_edges(u, v, slot):
                backward.add(u)
                stack.append(u)

    nodes = [name for name in mg.order if name in backward]
    tensors = {mg.output}
    for name in nodes:
        for u, _, slot, data in mg.dag.in_edges(name, keys=True, data=True):
            if (u in backward or u == input_key(mg.data_input)) and data_edges(u, name, slot):
                tensors.add(data["tensor"])
    return RelevanceSubgraph(nodes, tensors)
