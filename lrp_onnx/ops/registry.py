"""One registry from ONNX op type to its relevance handler.

A handler is called as ``handler(ctx, node, rule, relevance_out)`` where ``relevance_out``
maps the node's relevance-carrying outputs to the names of their relevance tensors; it
appends ONNX nodes through ``ctx.builder`` and returns ``[(input tensor, relevance tensor)]``
for its data inputs. ``family`` groups op types for composites ("conv", "dense", "avgpool",
"maxpool" take a rule; "activation" and "shape" do not).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import onnx

from ..errors import UnsupportedOpError

#: Families whose nodes are linear-type layers: they take a rule from the composite and are
#: counted by the composite's layer index (MaxPool only takes one in "avg" mode).
LAYER_FAMILIES = ("conv", "dense", "avgpool", "maxpool")
#: Families that take a rule but are not counted as layers: an unfoldable BatchNormalization
#: ("norm") gets the composite's rule if a predicate names it, else a default (composites.py).
UNCOUNTED_RULE_FAMILIES = ("norm",)


@dataclass(frozen=True)
class OpHandler:
    op_type: str
    family: str
    propagate: Callable
    data_slots: Optional[Tuple[int, ...]] = None   # None: every input may carry relevance

    def carries(self, slot: int) -> bool:
        return self.data_slots is None or slot in self.data_slots


HANDLERS: Dict[str, OpHandler] = {}


def register(*op_types: str, family: str, data_slots: Optional[Tuple[int, ...]] = None):
    """Decorator: register ``fn`` as the handler of ``op_types``."""

    def wrap(fn):
        for op_type in op_types:
            if op_type in HANDLERS:
                raise RuntimeError(f"two handlers registered for {op_type}")
            HANDLERS[op_type] = OpHandler(op_type, family, fn, data_slots)
        return fn

    return wrap


def supported_ops() -> Tuple[str, ...]:
    return tuple(sorted(HANDLERS))


def lookup(table: Dict[str, Any], node: onnx.NodeProto, what: str = "relevance handler"):
    """``table[node.op_type]``, or an UnsupportedOpError naming the node, its op type and the
    op types ``table`` has."""
    try:
        return table[node.op_type]
    except KeyError:
        raise UnsupportedOpError(
            f"node {node.name!r} has op type {node.op_type}, which has no {what} in lrp_onnx; "
            f"supported ops: {', '.join(sorted(table))}"
        ) from None


def handler_for(node: onnx.NodeProto) -> OpHandler:
    return lookup(HANDLERS, node)


def data_slots(node: onnx.NodeProto):
    """The input slots of ``node`` that relevance flows through (all for unknown ops, so that
    an unsupported op on the relevance path is found and reported)."""
    handler = HANDLERS.get(node.op_type)
    return range(len(node.input)) if handler is None else [i for i in range(len(node.input)) if handler.carries(i)]
