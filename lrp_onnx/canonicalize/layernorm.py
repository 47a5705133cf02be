"""Pass: fuse a decomposed layer normalization into one LayerNormalization node.

Exporters write LayerNorm as primitives (torch below opset 17, tf2onnx, jax2onnx):

    m = ReduceMean(x)   d = Sub(x, m)
    v = ReduceMean(Pow(d, 2) | Mul(d, d))                       (torch, tf2onnx)
      | Sub(ReduceMean(Pow(x, 2) | Mul(x, x)), Mul(m, m))       (jax2onnx: E[x^2] - E[x]^2)
    [v = Max(v, c)]   s = Sqrt(Add(v, eps))
    n = Div(d, s) | Mul(d, Reciprocal(s))   [Mul(n, w)]   [Add(., b)]
      | tf2onnx's Keras form: r = Reciprocal(s) [Mul(r, w)];  Add(Mul(x, r), [Add(] Mul(Neg(m), r) [, b)])

over the same trailing axes, every intermediate used only inside the pattern, w and b
constants. It becomes LayerNormalization(x, w, b, axis, epsilon) (w = 1, b = 0 when absent),
the form ops/normalization.py explains. A Max(v, c) (a guard against a negative variance) is
dropped only for a constant c <= 0, where it changes nothing; any other c stops the fusion.
"""
import numpy as np
import onnx
from onnx import helper

from ._graph import add_initializer, constant_value, rank_of
from ._match import Chain, fuse_matches, static_trailing_shape, trailing_constant


def _user(chain: Chain, tensor: str, op_type: str, inputs=None, other_of=None):
    """The node of ``op_type`` reading ``tensor`` (with exactly ``inputs``, or whose other input
    is ``other_of``), or None."""
    for node, _ in chain.uses.get(tensor, []):
        if node.op_type == op_type and (inputs is None or list(node.input) == inputs) and \
                (other_of is None or chain.other(node, tensor) == other_of):
            return node
    return None


def _variance(chain: Chain, x: str, m: str, d: str, axis: int):
    """(v, nodes) of the variance over the trailing axes from ``axis``: the mean of d^2, or
    E[x^2] - E[x]^2; None if neither."""
    square = chain.square_of(d)
    reduce = None if square is None else chain.only_use(square.output[0], ("ReduceMean",))
    if reduce is not None and chain.trailing_axes(reduce) == axis:
        return reduce.output[0], [square, reduce]
    square, mean_square = chain.square_of(x), _user(chain, m, "Mul", inputs=[m, m])
    reduce = None if square is None else chain.only_use(square.output[0], ("ReduceMean",))
    if reduce is None or mean_square is None or chain.trailing_axes(reduce) != axis:
        return None
    minus = _user(chain, reduce.output[0], "Sub", inputs=[reduce.output[0], mean_square.output[0]])
    return None if minus is None else (minus.output[0], [square, reduce, mean_square, minus])


def _keras_form(chain: Chain, x: str, m: str, std: str, shape):
    """(output, w, b, nodes) of x * r + (-m) * r [+ b], r = Reciprocal(std) [* w]; or None."""
    reciprocal = chain.only_use(std, ("Reciprocal",))
    if reciprocal is None:
        return None
    r, nodes, w = reciprocal.output[0], [reciprocal], None
    scaled = chain.only_use(r, ("Mul",))
    if scaled is not None:
        w = trailing_constant(constant_value(chain.graph, chain.other(scaled, r) or ""), shape, rank_of(chain.graph, x))
        if w is None:
            return None
        r = scaled.output[0]
        nodes.append(scaled)
    negated = _user(chain, m, "Neg")
    times_x = _user(chain, r, "Mul", other_of=x)
    times_m = None if negated is None else _user(chain, r, "Mul", other_of=negated.output[0])
    if times_x is None or times_m is None:
        return None
    nodes += [negated, times_x, times_m]
    shift, b = times_m.output[0], None
    with_bias = chain.only_use(shift, ("Add",))
    if with_bias is not None and chain.other(with_bias, shift) != times_x.output[0]:
        b = trailing_constant(constant_value(chain.graph, chain.other(with_bias, shift) or ""), shape,
                              rank_of(chain.graph, x))
        if b is None:
            return None
        shift = with_bias.output[0]
        nodes.append(with_bias)
    total = _user(chain, shift, "Add", other_of=times_x.output[0])
    return None if total is None else (total.output[0], w, b, nodes + [total])


def _closed(chain: Chain, nodes, out: str) -> bool:
    """Every tensor the pattern makes, but ``out``, is read only inside it and is no graph output."""
    inside = {id(n) for n in nodes}
    made = {name for n in nodes for name in n.output if name} - {out}
    return not (made & chain.outputs) and all(id(user) in inside for name in made for user, _ in chain.uses.get(name, []))


def _match(chain: Chain, mean: onnx.NodeProto):
    """(x, axis, eps, w, b, output, nodes, shape) of the LayerNorm that starts at ``mean``, or None."""
    axis = chain.trailing_axes(mean)
    x, m = mean.input[0], mean.output[0]
    sub = None if axis is None else _user(chain, m, "Sub", inputs=[x, m])
    shape = None if sub is None else static_trailing_shape(chain.graph, x, axis)
    found = None if shape is None else _variance(chain, x, m, sub.output[0], axis)
    if found is None:
        return None
    v, variance = found
    nodes, d = [mean, sub] + variance, sub.output[0]
    guard = chain.only_use(v, ("Max",))
    if guard is not None:
        floor = chain.scalar(chain.other(guard, v) or "")
        if floor is None or floor > 0:
            return None
        nodes.append(guard)
        v = guard.output[0]
    add = chain.only_use(v, ("Add",))
    eps = None if add is None else chain.scalar(chain.other(add, v) or "")
    sqrt = None if eps is None else chain.only_use(add.output[0], ("Sqrt",))
    if sqrt is None:
        return None
    nodes += [add, sqrt]
    std = sqrt.output[0]
    divide = chain.only_use(std, ("Div", "Reciprocal"))
    times = None if divide is None or divide.op_type != "Reciprocal" else chain.only_use(divide.output[0], ("Mul",))
    if times is not None and chain.other(times, divide.output[0]) == d:
        out, w, b, absorbed = chain.affine_after(times.output[0], shape)
        nodes += [divide, times] + absorbed
    elif divide is not None and list(divide.input) == [d, std]:
        out, w, b, absorbed = chain.affine_after(divide.output[0], shape)
        nodes += [divide] + absorbed
    else:
        keras = _keras_form(chain, x, m, std, shape)
        if keras is None:
            return None
        out, w, b, absorbed = keras
        nodes += absorbed
    return (x, axis, eps, w, b, out, nodes, shape) if _closed(chain, nodes, out) else None


def fuse_layernorm(model: onnx.ModelProto) -> bool:
    """Requires shape inference and constants as initializers. Ensures every decomposed layer
    normalization of the module doc is one LayerNormalization node (float32 models)."""
    graph = model.graph

    def build(mean, found):
        x, axis, eps, w, b, out, nodes, shape = found
        scale = add_initializer(graph, (np.ones(shape) if w is None else w).astype(np.float32), mean.name + "_ln_scale")
        bias = add_initializer(graph, (np.zeros(shape) if b is None else b).astype(np.float32), mean.name + "_ln_bias")
        return helper.make_node("LayerNormalization", [x, scale, bias], [out], name=mean.name + "_layernorm",
                                axis=axis, epsilon=eps), nodes

    return fuse_matches(graph, "ReduceMean", _match, build)
