"""One registry from (domain, op type) to its relevance handler.

A handler is called as ``handler(ctx, node, rule, relevance_out)`` where ``relevance_out``
maps the node's relevance-carrying outputs to the names of their relevance tensors; it
appends ONNX nodes through ``ctx.builder`` and returns ``[(input tensor, relevance tensor)]``
for its data inputs. ``family`` groups op types for composites ("conv", "dense", "avgpool",
"maxpool" take a rule; "activation" and "shape" do not).

Handlers are keyed by the node's domain as well as its op type: a ``com.microsoft.nchwc``
Conv (blocked layout, fused activation) is not an ONNX Conv, and only a handler registered for
that domain may take it. The default ONNX domain is ``""`` (``"ai.onnx"`` is the same domain).
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
#: or a LayerNorm ("norm"), a product of two activations ("bilinear", ops/families.py) and a
#: Softmax inside the graph, and a sum (Add/Sub/Sum: its stabilizer, ops/arithmetic.py) get the
#: composite's rule if a predicate names them, else their family's default
#: (composites.UNCOUNTED_FAMILIES).
UNCOUNTED_RULE_FAMILIES = ("norm", "bilinear", "softmax", "sum")

Key = Tuple[str, str]   # (domain, op type)


def op_key(node: onnx.NodeProto) -> Key:
    """(domain, op type) of ``node``, with the default ONNX domain spelled ``""``."""
    return ("" if node.domain in ("", "ai.onnx") else node.domain), node.op_type


def key_name(key: Key) -> str:
    """``Conv`` for the ONNX domain, ``com.microsoft:FusedConv`` for another."""
    domain, op_type = key
    return f"{domain}:{op_type}" if domain else op_type


@dataclass(frozen=True)
class OpHandler:
    op_type: str
    family: str
    propagate: Callable
    data_slots: Optional[Tuple[int, ...]] = None   # None: every input may carry relevance
    domain: str = ""

    def carries(self, slot: int) -> bool:
        return self.data_slots is None or slot in self.data_slots


HANDLERS: Dict[Key, OpHandler] = {}


def register(*op_types: str, family: str, data_slots: Optional[Tuple[int, ...]] = None, domain: str = ""):
    """Decorator: register ``fn`` as the handler of ``op_types`` of ``domain``."""

    def wrap(fn):
        for op_type in op_types:
            key = (domain, op_type)
            if key in HANDLERS:
                raise RuntimeError(f"two handlers registered for {key_name(key)}")
            HANDLERS[key] = OpHandler(op_type, family, fn, data_slots, domain)
        return fn

    return wrap


def supported_ops() -> Tuple[str, ...]:
    return tuple(sorted(key_name(key) for key in HANDLERS))


def has_handler(node: onnx.NodeProto, table: Dict[Key, Any] = HANDLERS) -> bool:
    return op_key(node) in table


def lookup(table: Dict[Key, Any], node: onnx.NodeProto, what: str = "relevance handler"):
    """``table[op_key(node)]``, or an UnsupportedOpError naming the node, its op type (and
    domain, when it is not ONNX's) and the op types ``table`` has."""
    key = op_key(node)
    try:
        return table[key]
    except KeyError:
        domain = f" of domain {key[0]!r}" if key[0] else ""
        raise UnsupportedOpError(
            f"node {node.name!r} has op type {key_name(key)}{domain}, which has no {what} in lrp_onnx; "
            f"supported ops: {', '.join(sorted(key_name(k) for k in table))}"
        ) from None


def handler_for(node: onnx.NodeProto) -> OpHandler:
    return lookup(HANDLERS, node)


def data_slots(node: onnx.NodeProto):
    """The input slots of ``node`` that relevance flows through (all for unknown ops, so that
    an unsupported op on the relevance path is found and reported)."""
    handler = HANDLERS.get(op_key(node))
    return range(len(node.input)) if handler is None else [i for i in range(len(node.input)) if handler.carries(i)]
