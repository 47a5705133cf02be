"""Pass: fuse a softmax written as primitives into one Softmax node.

Exporters and hand-written models spell softmax over the last axis as

    [m = ReduceMax(x)   x' = Sub(x, m)]   e = Exp(x')   s = ReduceSum(e)   y = Div(e, s) | Mul(e, Reciprocal(s))

(both reductions over the last axis with keepdims=1; the max subtraction, for stability, does
not change the value). Every intermediate used only inside the pattern, it becomes
Softmax(x, axis=-1): at the output ``strip_output_softmax`` then exposes the logits, inside
the network ops/softmax.py explains it.
"""
import onnx
from onnx import helper

from ._graph import rank_of
from ._match import Chain, fuse_matches


def _last_axis(chain: Chain, node: onnx.NodeProto) -> bool:
    rank = rank_of(chain.graph, node.input[0])
    return rank is not None and chain.trailing_axes(node) == rank - 1


def _match(chain: Chain, total: onnx.NodeProto):
    """(x, output, nodes) of the softmax whose sum is ``total``, or None."""
    exp = chain.made_by.get(total.input[0])
    if exp is None or exp.op_type != "Exp" or not _last_axis(chain, total):
        return None
    e, s = exp.output[0], total.output[0]
    divide = chain.only_use(s, ("Div", "Reciprocal"))
    if divide is not None and divide.op_type == "Reciprocal":
        times = chain.only_use(divide.output[0], ("Mul",))
        if times is None or chain.other(times, divide.output[0]) != e:
            return None
        tail = [divide, times]
    elif divide is not None and list(divide.input) == [e, s]:
        tail = [divide]
    else:
        return None
    users = {id(n) for n, _ in chain.uses.get(e, [])}
    if e in chain.outputs or users != {id(total), id(tail[-1])}:
        return None
    x, head = exp.input[0], []
    shift = chain.made_by.get(x)
    peak = None if shift is None or shift.op_type != "Sub" else chain.made_by.get(shift.input[1])
    if peak is not None and peak.op_type == "ReduceMax" and peak.input[0] == shift.input[0] and _last_axis(chain, peak) \
            and chain.only_use(peak.output[0], ("Sub",)) is shift and chain.only_use(x, ("Exp",)) is exp:
        x, head = shift.input[0], [peak, shift]
    return x, tail[-1].output[0], head + [exp, total] + tail


def fuse_softmax(model: onnx.ModelProto) -> bool:
    """Requires shape inference (ranks) and constants as initializers; runs before
    ``strip_output_softmax``. Ensures every softmax of the module doc is one Softmax node."""
    def build(total, found):
        x, out, nodes = found
        return helper.make_node("Softmax", [x], [out], name=total.name + "_softmax", axis=-1), nodes

    return fuse_matches(model.graph, "ReduceSum", _match, build)
