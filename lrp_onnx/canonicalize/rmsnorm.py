"""Pass: fuse a decomposed RMS normalization into one node: Llama's RMSNorm as torch exports it,
and Keras' RMSNormalization (keras.layers.RMSNormalization, x * rsqrt(mean(x^2) + eps) * w) as
tf2onnx writes it:

    v = ReduceMean(Pow(x, 2) | Mul(x, x))   s = Sqrt(Add(v, eps))
    n = Div(x, s) | Mul(x, Reciprocal(s)) | Mul(x, Div(1, s))   [Mul(n, w)]     (torch)
      | Mul(x, Mul(Reciprocal(s), w))                                         (tf2onnx's Keras form)

over trailing axes (tf2onnx's GlobalAveragePool for the mean over the last axis of a rank-3
tensor is a ReduceMean again after canonicalize/global_pool.py), every intermediate used only
inside the pattern, w a constant (float32 Casts around it are gone already: canonicalize/casts.py). It
becomes RMSNormalization(x, w, axis, epsilon):

- at opset >= 23, ONNX's own RMSNormalization;
- below, the node of the same name in the private domain ``ai.lrp_onnx`` (canonicalize/private.py),
  for the last axis only, defined by a model-local function of standard ops, so the canonical
  model, and the explainer built on it, still run in plain onnxruntime. Below opset 23 an
  RMSNorm over several trailing axes is left as it is.
"""
import numpy as np
import onnx
from onnx import AttributeProto, helper

from ._graph import add_initializer, constant_value
from ._match import Chain, remove, static_trailing_shape, trailing_constant
from .private import DOMAIN, default_opset, define


def _reciprocal_product(chain: Chain, x: str, std: str, shape):
    """(nodes, w) computing x / std [* w] as Div(x, std), Mul(x, Reciprocal(std)), Mul(x, Div(1,
    std)) (w None) or Mul(x, Mul(Reciprocal(std), w)) (w a constant within the trailing ``shape``)."""
    node = chain.only_use(std, ("Div", "Reciprocal"))
    if node is None:
        return None
    if node.op_type == "Div" and list(node.input) == [x, std]:
        return [node], None
    if node.op_type == "Div" and (node.input[1] != std or chain.scalar(node.input[0]) != 1.0):
        return None
    times = chain.only_use(node.output[0], ("Mul",))
    if times is None:
        return None
    if chain.other(times, node.output[0]) == x:
        return [node, times], None
    w = trailing_constant(constant_value(chain.graph, chain.other(times, node.output[0]) or ""), shape)
    applied = None if w is None else chain.only_use(times.output[0], ("Mul",))
    if applied is None or chain.other(applied, times.output[0]) != x:
        return None
    return [node, times, applied], w


def _match(chain: Chain, reduce: onnx.NodeProto):
    """(x, axis, eps, w, output, nodes) of the RMSNorm whose mean of squares is ``reduce``."""
    axis = chain.trailing_axes(reduce)
    square = chain.made_by.get(reduce.input[0])
    if axis is None or square is None or chain.only_use(square.output[0], ("ReduceMean",)) is not reduce:
        return None
    x = square.input[0]
    if not (square.op_type == "Pow" and chain.scalar(square.input[1]) == 2.0) and \
            not (square.op_type == "Mul" and list(square.input) == [x, x]):
        return None
    add = chain.only_use(reduce.output[0], ("Add",))
    eps = None if add is None else chain.scalar(chain.other(add, reduce.output[0]) or "")
    sqrt = None if eps is None else chain.only_use(add.output[0], ("Sqrt",))
    shape = static_trailing_shape(chain.graph, x, axis)
    found = None if sqrt is None or shape is None else _reciprocal_product(chain, x, sqrt.output[0], shape)
    if found is None:
        return None
    divide, w_inside = found
    out, w, b, absorbed = chain.affine_after(divide[-1].output[0], shape)
    if b is not None:   # an RMSNorm has no bias: leave the Add outside
        absorbed = absorbed[:-1]
        out = absorbed[-1].output[0] if absorbed else divide[-1].output[0]
    if w_inside is not None:
        w = w_inside if w is None else w_inside * w
    return x, axis, eps, w, out, [square, reduce, add, sqrt] + divide + absorbed, shape


def _function(opset: int) -> onnx.FunctionProto:
    """RMSNormalization(X, scale) = X / sqrt(mean(X^2, last axis) + epsilon) * scale, in
    standard ops of ``opset``."""
    eps = helper.make_node("Constant", [], ["eps"])
    eps.attribute.append(helper.make_attribute_ref("value_float", AttributeProto.FLOAT, ref_attr_name="epsilon"))
    if opset >= 18:
        mean = [helper.make_node("Constant", [], ["axes"], value_ints=[-1]),
                helper.make_node("ReduceMean", ["XX", "axes"], ["MS"], keepdims=1)]
    else:
        mean = [helper.make_node("ReduceMean", ["XX"], ["MS"], axes=[-1], keepdims=1)]
    nodes = [eps, helper.make_node("Mul", ["X", "X"], ["XX"])] + mean + [
        helper.make_node("Add", ["MS", "eps"], ["VE"]), helper.make_node("Sqrt", ["VE"], ["S"]),
        helper.make_node("Div", ["X", "S"], ["N"]), helper.make_node("Mul", ["N", "scale"], ["Y"])]
    return helper.make_function(DOMAIN, "RMSNormalization", ["X", "scale"], ["Y"], nodes,
                                [helper.make_opsetid("", opset)], attributes=["axis", "epsilon"])


def fuse_rmsnorm(model: onnx.ModelProto) -> bool:
    """Requires shape inference, constants as initializers, no float32 -> float32 Casts.
    Ensures every decomposed RMSNorm of the module doc is one RMSNormalization node (ONNX's
    from opset 23, else the private one with its model-local function)."""
    graph = model.graph
    opset = default_opset(model)
    chain = Chain(graph)
    fused = False
    for reduce in [n for n in graph.node if n.op_type == "ReduceMean"]:
        found = _match(chain, reduce)
        if found is None:
            continue
        x, axis, eps, w, out, nodes, shape = found
        private = opset < 23
        if private and len(shape) != 1:   # the private node normalizes the last axis only
            continue
        scale = add_initializer(graph, (np.ones(shape) if w is None else w).astype(np.float32), reduce.name + "_rms_scale")
        node = helper.make_node("RMSNormalization", [x, scale], [out], name=reduce.name + "_rmsnorm",
                                domain=DOMAIN if private else "", axis=-1 if private else axis, epsilon=eps)
        graph.node.insert(list(graph.node).index(nodes[-1]), node)
        remove(graph, nodes)
        if private:
            define(model, _function(opset))
        chain = Chain(graph)
        fused = True
    return fused
