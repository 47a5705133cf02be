"""Compile a model and a composite into ONE explainer ONNX model (DESIGN.md section 2).

The explainer keeps the model's forward graph and appends, in reverse topological order, the
relevance graph of every node on the relevance path. Its inputs are the model input and
``lrp_target_mask`` (same shape as the output: the initial relevance is output * mask; NaN
entries select the predicted class, i.e. the arg-max of each sample's output). Its outputs are
the model output, ``lrp_relevance`` (shaped like the input) and, on request, the relevance
of intermediate tensors as ``lrp_relevance:<tensor name>``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Union

import onnx
from onnx import TensorProto, helper

from . import ops
from .builder import GraphBuilder
from .ops import gradient as gradient_ops
from .canonicalize import canonicalize
from .composites import CompositeLike, Layer, resolve_composite
from .errors import CompositeError, InputError, ModelError, UnsupportedOpError
from .files import write_atomically
from .graph import ModelGraph, RelevanceSubgraph, build_graph, relevance_subgraph
from .load import PROTOBUF_LIMIT, ModelLike, default_opset, infer_shapes, load_model, serialized_size
from .rules import Rule

MASK_INPUT = "lrp_target_mask"
RELEVANCE_OUTPUT = "lrp_relevance"
LAYER_PREFIX = "lrp_relevance:"

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
        axes = list(range(lead)) + [lead + i for i, d in enumerate(in_shape) if d == 1 and out_shape[lead + i] != 1]
        if not axes:
            return relevance
        summed = self.builder.reduce("ReduceSum", relevance, axes, keepdims=1, hint="r_unbroadcast")
        return self.builder.op("Reshape", [summed, self.shape_of(tensor)], "r_unbroadcast")

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


@dataclass
class CompiledExplainer:
    """The explainer model and what it was made of."""

    model: Optional[onnx.ModelProto]     # None once an Explainer's session holds the weights
    input_name: str
    output_name: str
    rules: Dict[str, Rule]
    layer_tensors: List[str]             # tensors whose relevance can be requested, forward order
    layer_outputs: Dict[str, str]        # requested tensor -> explainer output name
    passes: List[str] = field(default_factory=list)

    def save(self, path, external_data: bool = False) -> None:
        """Write the standalone explainer model (see ``save_model``)."""
        save_model(self.model, path, external_data)


def save_model(model: onnx.ModelProto, path, external_data: bool = False) -> None:
    """Write ``model``. ``external_data``: its tensors of 1 KiB or more go to the file
    ``<name>.data`` beside it (ONNX external data, needed above protobuf's 2 GB limit; smaller
    ones, such as shapes, stay inline, where onnxruntime needs them). Both files or none are
    written."""
    if not external_data:
        if serialized_size(model) >= PROTOBUF_LIMIT:
            raise ModelError(f"the explainer is {serialized_size(model) / 2 ** 30:.1f} GiB, above protobuf's "
                             f"2 GiB limit: save it with external_data=True")
        write_atomically(path, lambda tmp: onnx.save(model, tmp))
        return
    location = os.path.basename(os.fspath(path)) + ".data"

    def write(tmp):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)   # save_model moves the tensors of the proto it is given
        onnx.save_model(copy, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)

    write_atomically(path, write, companions=(location,))


@dataclass
class Prepared:
    """A model after load -> canonicalize -> graph, ready to be compiled with any composite."""

    graph: ModelGraph
    subgraph: RelevanceSubgraph
    passes: List[str]


def prepare(model: ModelLike) -> Prepared:
    """load -> canonicalize -> graph; checks that every node on the relevance path has a handler."""
    proto = load_model(model)
    changed = canonicalize(proto)
    infer_shapes(proto)
    mg = build_graph(proto)
    for name in (MASK_INPUT, RELEVANCE_OUTPUT):
        if name in mg.producer or name in mg.constants:
            raise ModelError(f"the model already has a tensor named {name!r}, which the explainer needs")
    sub = relevance_subgraph(mg, ops.data_slots)
    unsupported = [mg.nodes[n] for n in sub.nodes if mg.nodes[n].op_type not in ops.HANDLERS]
    if unsupported:
        listed = ", ".join(f"{n.name!r} ({n.op_type})" for n in unsupported)
        raise UnsupportedOpError(
            f"no relevance handler for node(s) {listed}; supported ops: {', '.join(ops.supported_ops())}"
        )
    mg.static_shape(mg.data_input)   # relevance needs static sizes after the batch axis: say so about the input
    for tensor in (mg.data_input, mg.output):
        if mg.elem_types.get(tensor) != TensorProto.FLOAT:
            raise ModelError(f"lrp_onnx explains float32 models; {tensor!r} has ONNX element type "
                             f"{TensorProto.DataType.Name(mg.elem_types.get(tensor, 0))}")
    return Prepared(mg, sub, changed)


def layers_of(mg: ModelGraph, sub: RelevanceSubgraph) -> List[Layer]:
    """The nodes on the relevance path that take a rule: linear-type layers, numbered in model
    order, and uncounted ones (index None) such as an unfoldable BatchNormalization."""
    layers, counted = [], 0
    for name in sub.nodes:
        family = ops.HANDLERS[mg.nodes[name].op_type].family
        if family in ops.LAYER_FAMILIES:
            layers.append(Layer(name, mg.nodes[name].op_type, family, counted))
            counted += 1
        elif family in ops.UNCOUNTED_RULE_FAMILIES:
            layers.append(Layer(name, mg.nodes[name].op_type, family, None))
    return layers


def relevance_tensors(mg: ModelGraph, sub: RelevanceSubgraph) -> List[str]:
    """The tensors whose relevance can be requested: the input and every tensor that a
    relevance-carrying node reads, in forward order."""
    found = [mg.data_input] + [t for n in sub.nodes for t in mg.nodes[n].input if t in sub.tensors]
    return list(dict.fromkeys(found))


def check_layer_names(requested: Sequence[str], available: Sequence[str]) -> None:
    unknown = [t for t in requested if t not in available]
    if unknown:
        raise InputError(f"no relevance for tensor(s) {unknown}; tensors with relevance: {', '.join(available)}")


def _initial_relevance(ctx: Context, gradient: bool = False) -> str:
    """output * mask, where NaN entries of the mask take the one-hot of each sample's arg-max
    (the predicted class): R at the top of the network (tutorial: R[L] = A[L] * T). In
    gradient mode the mask itself: the gradient of the score sum(output * mask)."""
    b, out = ctx.builder, ctx.graph.output
    flat = b.op("Flatten", [out], "out_flat", axis=1)
    classes = b.op("Shape", [flat], "out_classes", start=1)
    predicted = b.op("ArgMax", [flat], "pred", axis=1, keepdims=0)
    hot = b.op("OneHot", [predicted, classes, b.const([0.0, 1.0], "onehot_values")], "pred_onehot", axis=-1)
    mask = b.op("Where", [b.op("IsNaN", [MASK_INPUT], "mask_nan"), b.op("Reshape", [hot, ctx.shape_of(out)], "pred_mask"),
                          MASK_INPUT], "mask")
    return mask if gradient else b.op("Mul", [out, mask], "r_top")


def compile_explainer(
    model: Union[ModelLike, Prepared], composite: CompositeLike = "epsilon_gamma_box",
    maxpool: Optional[str] = None, layers: Sequence[str] = (),
) -> CompiledExplainer:
    """Build the explainer model. ``model``: a path, a ModelProto, or a ``prepare``d model
    (reused as it is, so several explainers of one model load it once). ``maxpool`` overrides
    the composite's MaxPool mode; ``layers`` names tensors whose relevance becomes an output."""
    composite = resolve_composite(composite)
    mode = maxpool or composite.maxpool
    if mode not in ("winner", "avg"):
        raise ModelError(f"maxpool must be 'winner' or 'avg', got {mode!r}")
    gradient = composite.method != "lrp"   # "gradient" / "gradient_x_input": VJPs instead of rules
    if gradient and mode != "winner":
        raise CompositeError(f"{composite.method}: the gradient of MaxPool is winner-take-all; maxpool={mode!r} does not apply")
    prepared = model if isinstance(model, Prepared) else prepare(model)
    mg, sub, passes = prepared.graph, prepared.subgraph, prepared.passes
    rules = composite.assign(layers_of(mg, sub), mode)

    layer_tensors = relevance_tensors(mg, sub)
    check_layer_names(layers, layer_tensors)

    graph = onnx.GraphProto()
    graph.CopyFrom(mg.model.graph)
    taken = set(mg.producer) | set(mg.constants) | {n.name for n in graph.node} | {i.name for i in graph.input}
    builder = GraphBuilder(default_opset(mg.model), taken)
    ctx = Context(mg, builder, mode, {node.name: node for node in graph.node}, sub.tensors)

    incoming: Dict[str, List[str]] = defaultdict(list)
    if gradient:   # every op must have a VJP: list all that lack one before building anything
        missing = [mg.nodes[n] for n in sub.nodes if mg.nodes[n].op_type not in gradient_ops.GRADIENT_HANDLERS]
        if missing:
            raise UnsupportedOpError(
                f"no gradient (vector-Jacobian product) for node(s) "
                f"{', '.join(f'{n.name!r} ({n.op_type})' for n in missing)}; ops with one: {', '.join(gradient_ops.supported())}")
    incoming[mg.output].append(_initial_relevance(ctx, gradient))
    summed: Dict[str, str] = {}

    def relevance_of(tensor: str) -> str:
        """The relevance of a tensor: the sum over its uses (fan-out); zeros when no use passed
        any back (a gate, see ops.arithmetic)."""
        if tensor not in summed:
            summed[tensor] = builder.sum(incoming[tensor], "r_fanin") if incoming.get(tensor) else ctx.zeros_like(tensor)
        return summed[tensor]

    for name in reversed(sub.nodes):   # reverse topological order
        node = mg.nodes[name]
        relevance = {t: relevance_of(t) for t in node.output if t in sub.tensors and incoming.get(t)}
        if not relevance:   # nothing flows back through this node (it only feeds gates)
            continue
        propagate = gradient_ops.handler_for(node) if gradient else ops.handler_for(node).propagate
        for tensor, r in propagate(ctx, node, rules.get(name), relevance):
            incoming[tensor].append(r)

    outputs = {RELEVANCE_OUTPUT: mg.data_input, **{LAYER_PREFIX + t: t for t in layers}}
    for name, tensor in outputs.items():
        result = relevance_of(tensor)
        if composite.method == "gradient_x_input":   # x * dscore/dx (and a * dscore/da for layers)
            result = builder.op("Mul", [tensor, result], "g_times_input")
        builder.nodes.append(helper.make_node("Identity", [result], [name], name=builder.fresh("node_out")))
    graph.node.extend(builder.nodes)
    used = {name for node in builder.nodes for name in node.input}
    graph.initializer.extend(t for t in builder.initializers if t.name in used)   # e.g. a bias only a rule reads

    out_info = next(o for o in mg.model.graph.output if o.name == mg.output)
    graph.input.append(helper.make_tensor_value_info(MASK_INPUT, TensorProto.FLOAT, mg.shape(mg.output)))
    del graph.output[:]
    graph.output.append(out_info)
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, mg.shape(tensor))
                        for name, tensor in outputs.items())
    graph.name = f"lrp_explainer({mg.model.graph.name or 'model'}, {composite.name})"

    explainer = helper.make_model(graph, opset_imports=list(mg.model.opset_import), producer_name="lrp_onnx")
    explainer.ir_version = mg.model.ir_version
    layer_outputs = {t: LAYER_PREFIX + t for t in layers}
    return CompiledExplainer(explainer, mg.data_input, mg.output, rules, layer_tensors, layer_outputs, passes)
