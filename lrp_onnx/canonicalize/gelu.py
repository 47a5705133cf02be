"""Pass: fuse the tanh approximation of GELU, written as primitives, into one node.

    y = x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))

with x^3 as Pow(x, 3), Mul(x, Mul(x, x)) (torch's export) or Mul(Mul(x, x), x), and the 0.5
applied to x first or to the product last (constants either side of each Mul/Add). Without it
the cube sits on the relevance path with no handler (Pow), or is an odd "bilinear" product in
the gate branch. It becomes Gelu(x, approximate="tanh") at opset >= 20; below, the node
``GeluTanh`` of the private domain (canonicalize/private.py) with its model-local function.
Both are activations: relevance passes unchanged (AttnLRP's identity rule), as it already did
through the decomposed form (a product with the gate 0.5 (1 + tanh)).
"""
import math
from typing import Optional

import onnx
from onnx import helper

from ._match import Chain, fuse_matches
from .private import DOMAIN, default_opset, define

_C = math.sqrt(2.0 / math.pi)


def _near(value: Optional[float], target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * abs(target)


def _by_constant(chain: Chain, node, target: float) -> Optional[str]:
    """The non-constant input of ``node`` (a Mul/Add) when its other input is ``target``."""
    for mine, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        if _near(chain.scalar(other), target):
            return mine
    return None


def _cube_of(chain: Chain, tensor: str) -> Optional[tuple]:
    """(x, nodes) when ``tensor`` is x^3 as Pow(x, 3) or a product of x and Mul(x, x)."""
    node = chain.made_by.get(tensor)
    if node is None:
        return None
    if node.op_type == "Pow" and _near(chain.scalar(node.input[1]), 3.0):
        return node.input[0], [node]
    if node.op_type != "Mul":
        return None
    for x, square in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        inner = chain.made_by.get(square)
        if inner is not None and inner.op_type == "Mul" and list(inner.input) == [x, x] and \
                chain.only_use(square, ("Mul",)) is node:
            return x, [inner, node]
    return None


def _match(chain: Chain, tanh: onnx.NodeProto):
    """(x, output, nodes) of the tanh GELU around ``tanh``, or None."""
    scale = chain.made_by.get(tanh.input[0])
    if scale is None or scale.op_type != "Mul" or chain.only_use(scale.output[0], ("Tanh",)) is not tanh:
        return None
    inner = _by_constant(chain, scale, _C)
    add = chain.made_by.get(inner or "")
    if add is None or add.op_type != "Add" or chain.only_use(inner, ("Mul",)) is not scale:
        return None
    for x, term in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        times = chain.made_by.get(term)
        cubed = None if times is None or times.op_type != "Mul" else _by_constant(chain, times, 0.044715)
        cube = None if cubed is None or chain.only_use(cubed, ("Mul",)) is not times else _cube_of(chain, cubed)
        if cube is not None and cube[0] == x and chain.only_use(times.output[0], ("Add",)) is add:
            break
    else:
        return None
    nodes = cube[1] + [times, add, scale, tanh]
    plus = chain.only_use(tanh.output[0], ("Add",))
    if plus is None or _by_constant(chain, plus, 1.0) != tanh.output[0]:
        return None
    product = chain.only_use(plus.output[0], ("Mul",))
    if product is None:
        return None
    signal = chain.other(product, plus.output[0])
    half = chain.made_by.get(signal or "")
    if signal == x:   # x * (1 + tanh), then * 0.5
        last = chain.only_use(product.output[0], ("Mul",))
        if last is None or _by_constant(chain, last, 0.5) != product.output[0]:
            return None
        return x, last.output[0], nodes + [plus, product, last]
    if half is not None and half.op_type == "Mul" and _by_constant(chain, half, 0.5) == x and \
            chain.only_use(signal, ("Mul",)) is product:   # (0.5 x) * (1 + tanh)
        return x, product.output[0], nodes + [half, plus, product]
    return None


def _function(opset: int) -> onnx.FunctionProto:
    """GeluTanh(X) = X * 0.5 * (1 + tanh(sqrt(2/pi) (X + 0.044715 X^3))) in standard ops."""
    constants = [helper.make_node("Constant", [], [name], value_float=value)
                 for name, value in (("c", _C), ("k", 0.044715), ("one", 1.0), ("half", 0.5))]
    nodes = constants + [
        helper.make_node("Mul", ["X", "X"], ["X2"]), helper.make_node("Mul", ["X2", "X"], ["X3"]),
        helper.make_node("Mul", ["X3", "k"], ["KX3"]), helper.make_node("Add", ["X", "KX3"], ["U0"]),
        helper.make_node("Mul", ["U0", "c"], ["U"]), helper.make_node("Tanh", ["U"], ["T"]),
        helper.make_node("Add", ["T", "one"], ["P"]), helper.make_node("Mul", ["X", "P"], ["XP"]),
        helper.make_node("Mul", ["XP", "half"], ["Y"])]
    return helper.make_function(DOMAIN, "GeluTanh", ["X"], ["Y"], nodes, [helper.make_opsetid("", opset)])


def fuse_gelu_tanh(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers. Ensures every tanh GELU of the module doc is one
    node: Gelu(approximate="tanh") from opset 20, else the private GeluTanh."""
    opset = default_opset(model)

    def build(tanh, found):
        x, out, nodes = found
        if opset >= 20:
            return helper.make_node("Gelu", [x], [out], name=tanh.name + "_gelu", approximate="tanh"), nodes
        define(model, _function(opset))
        return helper.make_node("GeluTanh", [x], [out], name=tanh.name + "_gelu", domain=DOMAIN), nodes

    return fuse_matches(model.graph, "Tanh", _match, build)
