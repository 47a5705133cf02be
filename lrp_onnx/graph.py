"""The ONNX graph as a networkx DAG, and the part of it that carries relevance.

Nodes of the DAG are ONNX node names plus one node per graph input (``input:<name>``); an
edge producer -> consumer carries ``tensor`` (the tensor name) and ``slot`` (the consumer's
input index), keyed by slot so that ``Add(x, x)`` keeps both edges.

Relevance flows only through *data* inputs (the handler registry says which slots those are:
the shape input of a Reshape is not one). It starts at the relevance *sources* (a float graph
input, or the output of an embedding lookup: see ``inputs.py``); the relevance subgraph is every
node on a data path from a source to the explained output; constant and shape subgraphs fall
outside.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from .checks import HINT_STATIC
from .errors import ModelError


#: The floating-point element types: inputs of these types are relevance sources.
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


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
    inputs: List[str]                     # the graph inputs that are not initializers
    sources: List[str]                    # the tensors relevance is read at (graph inputs or node outputs)
    output: str

    @property
    def data_input(self) -> str:
        """The one relevance source (an error naming them where there are several)."""
        if len(self.sources) != 1:
            raise ModelError(f"the model has {len(self.sources)} relevance sources {self.sources}, not one")
        return self.sources[0]

    def constant(self, name: str) -> Optional[np.ndarray]:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def shape(self, name: str) -> Tuple:
        if name not in self.shapes:
            raise ModelError(f"shape inference found no shape for tensor {name!r}")
        return self.shapes[name]

    def static_shape(self, name: str, from_axis: int = 1) -> Tuple[int, ...]:
        """The dims of ``name`` from ``from_axis`` on, which must be known integers (for the
        handlers that truly need them: the error says so)."""
        dims = self.shape(name)[from_axis:]
        if not all(isinstance(d, int) for d in dims):
            raise ModelError(f"tensor {name!r} needs static dimensions after the batch axis, has {self.shape(name)} "
                             f"(its relevance handler builds constants of that size): {HINT_STATIC}")
        return tuple(dims)


def value_dims(value_info: onnx.ValueInfoProto) -> Optional[Tuple]:
    """The dims of a typed tensor (int, or str/None where symbolic); None without a shape."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)


def build_graph(model: onnx.ModelProto, output: Optional[str] = None,
                sources: Optional[Sequence[str]] = None) -> ModelGraph:
    """Index a canonical model. ``output`` defaults to the first graph output, ``sources`` (the
    tensors relevance is read at, inputs.py) to the floating-point graph inputs."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    data_inputs = [i.name for i in graph.input if i.name not in constants]
    outputs = [o.name for o in graph.output]
    output = output or outputs[0]
    if output not in outputs:
        raise ModelError(f"{output!r} is not an output of the model; outputs: {outputs}")

    shapes, elem_types = {}, {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value_dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
        elem_types[vi.name] = vi.type.tensor_type.elem_type
    for t in graph.initializer:
        shapes[t.name], elem_types[t.name] = tuple(t.dims), t.data_type

    dag = nx.MultiDiGraph()
    nodes, order, producer = {}, [], {}
    for name in data_inputs:
        dag.add_node(input_key(name), kind="input")
        producer[name] = input_key(name)
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
    if sources is None:
        # every floating-point input: one that is not float32 is reported (checks.model_blockers)
        sources = [name for name in data_inputs if elem_types.get(name) in FLOAT_TYPES]
    missing = [t for t in sources if t not in producer]
    if missing:
        raise ModelError(f"relevance source(s) {missing} are not tensors of the model")
    return ModelGraph(model, dag, nodes, order, producer, constants, shapes, elem_types, data_inputs, list(sources),
                      output)


@dataclass
class RelevanceSubgraph:
    """The nodes (in forward order) and tensors that carry relevance."""

    nodes: List[str]
    tensors: Set[str]


def relevance_subgraph(mg: ModelGraph, data_slots) -> RelevanceSubgraph:
    """Nodes on a data path from a relevance source to the explained output (a node that makes
    a source is not one: relevance stops at the source).

    ``data_slots(node)`` returns the input slots through which relevance flows."""
    sources = set(mg.sources)
    if not sources:
        raise ModelError(f"the model has no relevance source: no float32 input and no embedding lookup "
                         f"(Gather from a constant table); its inputs: {mg.inputs}")
    makers = {mg.producer[t] for t in sources}

    def data_edge(v, slot):
        return v in mg.nodes and v not in makers and slot in data_slots(mg.nodes[v])

    forward: Set[str] = set()
    stack = [(mg.producer[t], t) for t in sources]
    while stack:
        u, only = stack.pop()
        for _, v, slot, data in mg.dag.out_edges(u, keys=True, data=True):
            if (only is None or data["tensor"] == only) and v not in forward and data_edge(v, slot):
                forward.add(v)
                stack.append((v, None))

    if mg.output in sources:
        raise ModelError("the explained output is a relevance source itself")
    start = mg.producer.get(mg.output)
    if start not in forward:
        raise ModelError(f"the output {mg.output!r} does not depend on the input(s) {sorted(sources)}")
    backward: Set[str] = {start}
    stack = [start]
    while stack:
        v = stack.pop()
        for u, _, slot, data in mg.dag.in_edges(v, keys=True, data=True):
            if u in forward and u not in backward and data_edge(v, slot):
                backward.add(u)
                stack.append(u)

    nodes = [name for name in mg.order if name in backward]
    tensors = {mg.output}
    for name in nodes:
        for u, _, slot, data in mg.dag.in_edges(name, keys=True, data=True):
            if (u in backward or data["tensor"] in sources) and data_edge(name, slot):
                tensors.add(data["tensor"])
    return RelevanceSubgraph(nodes, tensors)
