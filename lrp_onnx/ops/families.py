"""The family of a node, for composites: its handler's family, except where one op type serves
two families and the node's operands decide (the registry keeps one handler per op type):

- MatMul of two activations (both operands on the relevance path or computed, neither a
  constant weight) and Mul of two activations neither of which is a gate: "bilinear" (their
  handlers, ops/linear.py and ops/arithmetic.py, delegate to ops/bilinear.py);
- Gather from a constant table (an embedding lookup): "embedding".
"""
from __future__ import annotations

from .arithmetic import gate_source
from .registry import handler_for


def is_bilinear(graph, carrying, node) -> bool:
    """A MatMul whose second operand is not a constant weight, or a Mul of two different
    activations on the relevance path neither of which is a gate."""
    if node.op_type == "MatMul":
        return node.input[1] not in graph.constants
    if node.op_type == "Mul":
        a, b = node.input[0], node.input[1]
        return (a != b and a in carrying and b in carrying
                and gate_source(graph, a) is None and gate_source(graph, b) is None)
    return False


def family_of(graph, carrying, node) -> str:
    """``node``'s family (module doc); ``carrying``: the tensors on the relevance path."""
    if is_bilinear(graph, carrying, node):
        return "bilinear"
    if node.op_type == "Gather" and node.input[0] in graph.constants:
        return "embedding"
    return handler_for(node).family
