"""Compile a model and a composite into ONE explainer ONNX model (DESIGN.md section 2).

The explainer keeps the model's forward graph and appends, in reverse topological order, the
relevance graph of every node on the relevance path. Its inputs are the model's inputs and
``lrp_target_mask`` (same shape as the output: the initial relevance is output * mask; NaN
entries select the predicted class, i.e. the arg-max of each sample's output, at the last
position for a sequence output (N, T, V)). Its outputs are the model output, ``lrp_relevance``
(shaped like the one float input; per token for a token model: the sum over the embedding
lookups), ``lrp_relevance:<source>`` per relevance source where there are several (inputs.py),
and, on request, the relevance of intermediate tensors as ``lrp_relevance:<tensor name>``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

import onnx
from onnx import TensorProto, helper

from . import checks, deployed, ops
from .builder import GraphBuilder
from .ops import gradient as gradient_ops
from .ops.context import Context
from .ops.registry import key_name, op_key
from .canonicalize import canonicalize
from .composites import CompositeLike, Layer, resolve_composite
from .checks import Blocker, handler_blocker
from .errors import CompositeError, InputError, LRPError, ModelError
from .files import write_atomically
from .graph import ModelGraph, RelevanceSubgraph, build_graph, relevance_subgraph
from . import inputs
from .inputs import ModelInput, Source, add_sources, model_inputs
from .load import PROTOBUF_LIMIT, ModelLike, default_opset, infer_shapes, load_model, serialized_size
from .rules import Rule

MASK_INPUT = "lrp_target_mask"
RELEVANCE_OUTPUT = "lrp_relevance"
LAYER_PREFIX = "lrp_relevance:"


@dataclass
class CompiledExplainer:
    """The explainer model and what it was made of."""

    model: Optional[onnx.ModelProto]     # None once an Explainer's session holds the weights
    inputs: List[ModelInput]
    sources: List[Source]
    output_name: str
    output_shape: Tuple                  # dims, symbolic where the model's are
    rules: Dict[str, Rule]
    layer_tensors: List[str]             # tensors whose relevance can be requested, forward order
    layer_outputs: Dict[str, str]        # requested tensor -> explainer output name
    source_outputs: Dict[str, str]       # source name -> explainer output name
    relevance_output: Optional[str]      # RELEVANCE_OUTPUT, or None (several float inputs)
    passes: List[str] = field(default_factory=list)

    @property
    def input_name(self) -> str:
        """The model's one input (an error for a model with several)."""
        if len(self.inputs) != 1:
            names = ", ".join(i.name for i in self.inputs)
            raise ModelError(f"the model has {len(self.inputs)} inputs ({names}), not one")
        return self.inputs[0].name

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


#: Element types that every IR version since 4 has (newer IRs add float8, int4, float4, ...).
_CLASSIC_TYPES = {getattr(TensorProto, t) for t in (
    "FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64", "BOOL", "STRING")}


def lowest_ir_version(model: onnx.ModelProto, current: int) -> int:
    """The lowest IR version ``model``'s opsets need (8 with model-local functions), at most
    ``current``: onnx 1.20+ writes IR 14, which older runtimes (onnxruntime-web and -node 1.30
    read IR <= 13) refuse; ``current`` where an element type of a newer IR is used."""
    types = {t.data_type for t in model.graph.initializer} | {
        v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    if not types <= _CLASSIC_TYPES | {0}:
        return current
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return min(current, max(needed, 8 if model.functions else 4))


@dataclass
class Prepared:
    """A model after load -> canonicalize -> graph, ready to be compiled with any composite."""

    graph: ModelGraph
    subgraph: RelevanceSubgraph
    passes: List[str]
    inputs: List[ModelInput]
    sources: List[Source]
    deployed: Optional[onnx.ModelProto] = None   # the file's own graph, for a quantized/float16 one (deployed.py)


def prepare(model: ModelLike) -> Prepared:
    """load -> canonicalize -> relevance sources (inputs.py) -> graph. What stops the model
    from being explained is found when it is compiled (``assess``), so that a model that
    cannot be compiled can still be inspected."""
    proto = load_model(model)
    changed = canonicalize(proto)
    infer_shapes(proto)
    sources = add_sources(proto)
    if any(s.tensor.startswith(inputs.EXPAND_PREFIX) for s in sources):
        infer_shapes(proto)   # a lookup shared by the batch was expanded to it
    mg = build_graph(proto, sources=[s.tensor for s in sources])
    for name in (MASK_INPUT, RELEVANCE_OUTPUT):
        if name in mg.producer or name in mg.constants:
            raise ModelError(f"the model already has a tensor named {name!r}, which the explainer needs")
    return Prepared(mg, relevance_subgraph(mg, ops.data_slots), changed, model_inputs(proto), sources,
                    deployed.original_forward(model, changed, mg.output))


def layers_of(mg: ModelGraph, sub: RelevanceSubgraph) -> List[Layer]:
    """The nodes on the relevance path that take a rule: linear-type layers, numbered in model
    order, and uncounted ones (index None) such as an unfoldable BatchNormalization."""
    layers, counted = [], 0
    for name in sub.nodes:
        if not ops.has_handler(mg.nodes[name]):   # a blocker (find_blockers): takes no rule
            continue
        family = ops.family_of(mg, sub.tensors, mg.nodes[name])   # per node: a MatMul may be "bilinear"
        if family in ops.LAYER_FAMILIES:
            layers.append(Layer(name, mg.nodes[name].op_type, family, counted))
            counted += 1
        elif family in ops.UNCOUNTED_RULE_FAMILIES:
            layers.append(Layer(name, mg.nodes[name].op_type, family, None))
    return layers


def relevance_tensors(mg: ModelGraph, sub: RelevanceSubgraph) -> List[str]:
    """The tensors whose relevance can be requested: the sources and every tensor that a
    relevance-carrying node reads, in forward order."""
    found = list(mg.sources) + [t for n in sub.nodes for t in mg.nodes[n].input if t in sub.tensors]
    return list(dict.fromkeys(found))


def check_layer_names(requested: Sequence[str], available: Sequence[str]) -> None:
    unknown = [t for t in requested if t not in available]
    if unknown:
        raise InputError(f"no relevance for tensor(s) {unknown}; tensors with relevance: {', '.join(available)}")


#: The rank of a sequence output (N, T, V) (a causal LM's logits): its predicted class is the
#: arg-max at the last position.
SEQUENCE_RANK = 3


def _initial_relevance(ctx: Context, gradient: bool = False, scores: Optional[str] = None) -> str:
    """output * mask, where NaN entries of the mask take the one-hot of each sample's arg-max
    (the predicted class; at the last position of a sequence output): R at the top of the
    network (tutorial: R[L] = A[L] * T). The mask may have size 1 on axes it is broadcast
    along. In gradient mode the mask itself: the gradient of the score sum(output * mask).
    ``scores``: the tensor whose arg-max is the predicted class (default: the output; a deployed
    file's own output, see deployed.py)."""
    b, out = ctx.builder, ctx.graph.output
    scores = scores or out
    values = b.const([0.0, 1.0], "onehot_values")
    if len(ctx.graph.shape(out)) == SEQUENCE_RANK:
        last = b.op("Gather", [scores, b.const(-1, "last", np.int64)], "out_last", axis=1)
        predicted = b.op("ArgMax", [last], "pred", axis=1, keepdims=0)
        hot = b.op("OneHot", [predicted, b.op("Shape", [out], "out_classes", start=2), values], "pred_onehot", axis=-1)
        length = b.op("Shape", [out], "out_length", start=1, end=2)
        last_position = b.op("Sub", [length, b.const([1], "one", np.int64)], "last_position")
        at_last = b.op("OneHot", [last_position, length, values], "at_last", axis=-1)
        predicted_mask = b.op("Mul", [b.op("Unsqueeze", [hot, b.const([1], "axis1", np.int64)], "pred_onehot"),
                                      b.op("Unsqueeze", [at_last, b.const([2], "axis2", np.int64)], "at_last")],
                              "pred_mask")
    else:
        flat = b.op("Flatten", [scores], "out_flat", axis=1)
        classes = b.op("Shape", [flat], "out_classes", start=1)
        predicted = b.op("ArgMax", [flat], "pred", axis=1, keepdims=0)
        hot = b.op("OneHot", [predicted, classes, values], "pred_onehot", axis=-1)
        predicted_mask = b.op("Reshape", [hot, ctx.shape_of(out)], "pred_mask")
    mask = b.op("Where", [b.op("IsNaN", [MASK_INPUT], "mask_nan"), predicted_mask, MASK_INPUT], "mask")
    return mask if gradient else b.op("Mul", [out, mask], "r_top")


def default_mask(output: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(the predicted class per sample, its one-hot mask shaped like ``output``): what a NaN
    mask selects in the explainer (``_initial_relevance``)."""
    n = len(output)
    if output.ndim == SEQUENCE_RANK:
        target = output[:, -1].argmax(axis=-1)
        mask = np.zeros_like(output)
        mask[np.arange(n), -1, target] = 1.0
        return target, mask
    flat = output.reshape(n, -1)
    target = flat.argmax(axis=1)
    mask = np.zeros_like(flat)
    mask[np.arange(n), target] = 1.0
    return target, mask.reshape(output.shape)


@dataclass
class _RelevanceGraph:
    """The relevance nodes of every node on the path, or the blockers that stopped some."""

    ctx: Context
    graph: onnx.GraphProto               # a copy of the forward graph (MaxPool may gain Indices)
    rules: Dict[str, Rule]
    relevance_of: Callable[[str], str]   # tensor -> its relevance tensor
    blockers: List[Blocker]


def _mode(composite, maxpool: Optional[str]) -> str:
    mode = maxpool or composite.maxpool
    if mode not in ("winner", "avg"):
        raise ModelError(f"maxpool must be 'winner' or 'avg', got {mode!r}")
    if composite.method != "lrp" and mode != "winner":
        raise CompositeError(f"{composite.method}: the gradient of MaxPool is winner-take-all; maxpool={mode!r} does not apply")
    return mode


def _relevance_graph(prepared: Prepared, composite, mode: str) -> _RelevanceGraph:
    """Walk the relevance path in reverse topological order and let each node's handler append
    its relevance nodes. A node that cannot be handled (no handler or VJP, or its handler
    refuses it) becomes a Blocker, and zeros flow on from it, so that one walk finds every
    blocker; the checks of the explained input and output come first (checks.model_blockers)."""
    mg, sub = prepared.graph, prepared.subgraph
    gradient = composite.method != "lrp"   # "gradient" / "gradient_x_input": VJPs instead of rules
    table = gradient_ops.GRADIENT_HANDLERS if gradient else ops.HANDLERS
    blockers = [handler_blocker(mg.nodes[n].op_type, mg.nodes[n].domain, n, gradient)
                for n in sub.nodes if not ops.has_handler(mg.nodes[n], table)]
    blockers += checks.model_blockers(mg, [b.node for b in blockers])
    try:
        rules = composite.assign(layers_of(mg, sub), mode)
    except CompositeError as exc:
        rules, blockers = {}, blockers + [Blocker(str(exc), "give a rule for every layer (see `lrp-onnx inspect`)",
                                                  kind="composite", error=CompositeError)]

    graph = onnx.GraphProto()
    graph.CopyFrom(mg.model.graph)
    taken = set(mg.producer) | set(mg.constants) | {n.name for n in graph.node} | {i.name for i in graph.input}
    builder = GraphBuilder(default_opset(mg.model), taken)
    ctx = Context(mg, builder, mode, {node.name: node for node in graph.node}, sub.tensors)
    incoming: Dict[str, List[str]] = defaultdict(list)
    summed: Dict[str, str] = {}

    def relevance_of(tensor: str) -> str:
        """The relevance of a tensor: the sum over its uses (fan-out); zeros when no use passed
        any back (a gate, see ops.arithmetic)."""
        if tensor not in summed:
            summed[tensor] = builder.sum(incoming[tensor], "r_fanin") if incoming.get(tensor) else ctx.zeros_like(tensor)
        return summed[tensor]

    if blockers:   # the handlers would only meet the same problems again
        return _RelevanceGraph(ctx, graph, rules, relevance_of, blockers)
    scores = deployed.scores_name(mg.output) if prepared.deployed is not None else None
    incoming[mg.output].append(_initial_relevance(ctx, gradient, scores))
    for name in reversed(sub.nodes):
        node = mg.nodes[name]
        relevance = {t: relevance_of(t) for t in node.output if t in sub.tensors and incoming.get(t)}
        if not relevance:   # nothing flows back through this node (it only feeds gates)
            continue
        try:
            propagate = gradient_ops.handler_for(node) if gradient else ops.handler_for(node).propagate
            for tensor, r in propagate(ctx, node, rules.get(name), relevance):
                incoming[tensor].append(r)
        except LRPError as exc:
            blockers.append(checks.from_exception(exc, key_name(op_key(node)), name))
    return _RelevanceGraph(ctx, graph, rules, relevance_of, blockers)


@dataclass(frozen=True)
class Assessment:
    """What compiling a model with a composite would do: the rule of each layer, and every
    blocker (empty when the model can be explained)."""

    rules: Dict[str, Rule]
    blockers: List[Blocker]


def assess(model: Union[ModelLike, Prepared], composite: CompositeLike = "epsilon_gamma_box",
           maxpool: Optional[str] = None) -> Assessment:
    """The walk of ``compile_explainer(model, composite, maxpool)``, its blockers collected
    instead of raised: what ``lrp-onnx inspect`` and ``lrp_onnx.coverage`` report."""
    composite = resolve_composite(composite)
    prepared = model if isinstance(model, Prepared) else prepare(model)
    built = _relevance_graph(prepared, composite, _mode(composite, maxpool))
    return Assessment(built.rules, built.blockers)


def compile_explainer(
    model: Union[ModelLike, Prepared], composite: CompositeLike = "epsilon_gamma_box",
    maxpool: Optional[str] = None, layers: Sequence[str] = (),
) -> CompiledExplainer:
    """Build the explainer model. ``model``: a path, a ModelProto, or a ``prepare``d model
    (reused as it is, so several explainers of one model load it once). ``maxpool`` overrides
    the composite's MaxPool mode; ``layers`` names tensors whose relevance becomes an output.
    Every problem of the model is raised at once (checks.raise_blockers)."""
    composite = resolve_composite(composite)
    mode = _mode(composite, maxpool)
    prepared = model if isinstance(model, Prepared) else prepare(model)
    mg, sub, passes = prepared.graph, prepared.subgraph, prepared.passes
    built = _relevance_graph(prepared, composite, mode)
    gradient = composite.method != "lrp"
    checks.raise_blockers(built.blockers, gradient_ops.supported() if gradient else ops.supported_ops())
    layer_tensors = relevance_tensors(mg, sub)
    check_layer_names(layers, layer_tensors)
    graph, builder, rules, relevance_of = built.graph, built.ctx.builder, built.rules, built.relevance_of

    explained: Dict[str, str] = {}

    def relevance(tensor: str) -> str:
        if tensor not in explained:
            explained[tensor] = relevance_of(tensor)
            if composite.method == "gradient_x_input":   # x * dscore/dx (and a * dscore/da for layers)
                explained[tensor] = builder.op("Mul", [tensor, explained[tensor]], "g_times_input")
        return explained[tensor]

    outputs = _source_outputs(builder, mg, prepared.sources, relevance)
    outputs.update({LAYER_PREFIX + t: (relevance(t), mg.shape(t)) for t in layers})
    for name, (result, _) in outputs.items():
        builder.nodes.append(helper.make_node("Identity", [result], [name], name=builder.fresh("node_out")))
    graph.node.extend(builder.nodes)
    used = {name for node in builder.nodes for name in node.input}
    graph.initializer.extend(t for t in builder.initializers if t.name in used)   # e.g. a bias only a rule reads

    out_info = next(o for o in mg.model.graph.output if o.name == mg.output)
    graph.input.append(helper.make_tensor_value_info(MASK_INPUT, TensorProto.FLOAT, mg.shape(mg.output)))
    del graph.output[:]
    graph.output.append(out_info)
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
                        for name, (_, dims) in outputs.items())
    graph.name = f"lrp_explainer({mg.model.graph.name or 'model'}, {composite.name})"
    if prepared.deployed is not None:   # the output is the deployed file's own (deployed.py)
        deployed.embed(graph, prepared.deployed, mg.output)

    explainer = helper.make_model(graph, opset_imports=list(mg.model.opset_import), producer_name="lrp_onnx")
    explainer.functions.extend(mg.model.functions)   # model-local functions (canonicalize/rmsnorm.py)
    explainer.ir_version = lowest_ir_version(explainer, mg.model.ir_version)
    layer_outputs = {t: LAYER_PREFIX + t for t in layers}
    single = RELEVANCE_OUTPUT if _one_float_input(prepared.sources) else None
    source_outputs = {s.name: single or LAYER_PREFIX + s.name for s in prepared.sources}
    return CompiledExplainer(explainer, prepared.inputs, prepared.sources, mg.output, mg.shape(mg.output), rules,
                             layer_tensors, layer_outputs, source_outputs,
                             RELEVANCE_OUTPUT if RELEVANCE_OUTPUT in outputs else None, passes)


def _one_float_input(sources: Sequence[Source]) -> bool:
    return len(sources) == 1 and not sources[0].is_embedding


def _source_outputs(builder: GraphBuilder, mg: ModelGraph, sources: Sequence[Source],
                    relevance: Callable[[str], str]) -> Dict[str, Tuple[str, Tuple]]:
    """{output name: (relevance tensor, dims)} of the sources. One float input: its relevance
    as ``lrp_relevance`` (nothing else). Otherwise ``lrp_relevance:<source>`` each, an
    embedding lookup's summed over the hidden axis (one value per token), and, where there are
    lookups, ``lrp_relevance``: their sum per token."""
    if _one_float_input(sources):
        return {RELEVANCE_OUTPUT: (relevance(sources[0].tensor), mg.shape(sources[0].tensor))}
    outputs = {}
    for source in sources:
        result, dims = relevance(source.tensor), mg.shape(source.tensor)
        if source.is_embedding:
            result, dims = builder.reduce("ReduceSum", result, [-1], keepdims=0, hint="r_token"), dims[:-1]
        outputs[LAYER_PREFIX + source.name] = (result, dims)
    tokens = [outputs[LAYER_PREFIX + s.name] for s in sources if s.is_embedding]
    if tokens:
        outputs = {RELEVANCE_OUTPUT: (builder.sum([r for r, _ in tokens], "r_tokens"), tokens[0][1]), **outputs}
    return outputs
