"""Pass: fuse a hard-swish written as primitives into one HardSwish node.

x * relu6(x + 3) / 6 (MobileNetV3's h-swish; Keras' hard_swish, as tf2onnx writes it) is

    g = Clip(Add(x, 3), 0, 6) | Min(Relu(Add(x, 3)), 6)
    y = Mul(x, Div(g, 6) | Mul(g, 1/6)) | Div(Mul(x, g), 6) | Mul(Mul(x, g), 1/6)

with every intermediate used only inside the pattern. Left alone, Mul(x, g) is a product of
two activations (g is not a Sigmoid-like gate), which takes the bilinear rule; fused, it is an
activation and passes relevance through, like HardSwish and x * HardSigmoid(x).
"""
import numpy as np
import onnx
from onnx import helper

from ._match import Chain, fuse_matches


def _is(chain: Chain, name: str, value: float) -> bool:
    scalar = chain.scalar(name) if name else None
    return scalar is not None and bool(np.isclose(scalar, value, rtol=1e-6, atol=0))


def _relu6(chain: Chain, shifted: str):
    """The nodes computing min(max(shifted, 0), 6) from ``shifted``, or None."""
    node = chain.only_use(shifted, ("Clip", "Relu"))
    if node is None or node.input[0] != shifted:
        return None
    if node.op_type == "Clip":
        bounds = list(node.input[1:3]) + [""] * (3 - len(node.input))
        return [node] if _is(chain, bounds[0], 0.0) and _is(chain, bounds[1], 6.0) else None
    cap = chain.only_use(node.output[0], ("Min",))
    return [node, cap] if cap is not None and _is(chain, chain.other(cap, node.output[0]) or "", 6.0) else None


def _over_six(chain: Chain, tensor: str):
    """Div(tensor, 6) or Mul(tensor, 1/6) reading ``tensor``, or None."""
    node = chain.only_use(tensor, ("Div", "Mul"))
    if node is None:
        return None
    if node.op_type == "Div":
        return node if node.input[0] == tensor and _is(chain, node.input[1], 6.0) else None
    return node if _is(chain, chain.other(node, tensor) or "", 1 / 6) else None


def _match(chain: Chain, add: onnx.NodeProto):
    """(x, output, nodes) of the hard-swish that starts at ``add`` = Add(x, 3), or None."""
    x = next((name for name in add.input if _is(chain, chain.other(add, name) or "", 3.0)), None)
    relu6 = None if x is None else _relu6(chain, add.output[0])
    if relu6 is None:
        return None
    g = relu6[-1].output[0]
    gate = _over_six(chain, g)
    if gate is not None:
        times = chain.only_use(gate.output[0], ("Mul",))
        if times is None or chain.other(times, gate.output[0]) != x:
            return None
        return x, times.output[0], [add] + relu6 + [gate, times]
    times = chain.only_use(g, ("Mul",))
    scale = None if times is None or chain.other(times, g) != x else _over_six(chain, times.output[0])
    return None if scale is None else (x, scale.output[0], [add] + relu6 + [times, scale])


def fuse_hardswish(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers and opset >= 14 (HardSwish; models are lifted to 17
    on load). Ensures every hard-swish of the module doc is one HardSwish node."""
    def build(add, found):
        x, out, nodes = found
        return helper.make_node("HardSwish", [x], [out], name=add.name + "_hardswish"), nodes

    return fuse_matches(model.graph, "Add", _match, build)
