"""Which op types of a model lrp_onnx can explain: every op type with its count, whether a
relevance handler exists, whether it lies on the relevance path at all (ops off the path,
such as shape arithmetic, need no handler), and whether it stops the model from being
explained with a composite, found by the walk compiling runs (``compile.assess``)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import List, Optional

from . import ops
from .checks import Blocker
from .compile import assess, prepare
from .composites import CompositeLike
from .load import ModelLike
from .ops.registry import key_name, op_key


@dataclass(frozen=True)
class OpCoverage:
    op_type: str             # "Conv", or "domain:Op" outside the ONNX domain
    count: int               # nodes of this type after canonicalization
    on_path: int             # of which carry relevance
    handled: bool            # a relevance handler is registered
    blocking: bool           # some node of this type stops the model from being explained


def op_coverage(model: ModelLike, composite: CompositeLike = "epsilon_gamma_box",
                maxpool: Optional[str] = None) -> List[OpCoverage]:
    """One row per op type of the canonicalized model, sorted by op type."""
    prepared = prepare(model)
    mg, sub = prepared.graph, prepared.subgraph
    blocked = {b.op_type for b in assess(prepared, composite, maxpool).blockers}
    keys = {name: key_name(op_key(node)) for name, node in mg.nodes.items()}
    counts = Counter(keys.values())
    on_path = Counter(keys[name] for name in sub.nodes)
    handled = {keys[name] for name, node in mg.nodes.items() if ops.has_handler(node)}
    return [OpCoverage(op, counts[op], on_path[op], op in handled, op in blocked) for op in sorted(counts)]


def unsupported_ops(model: ModelLike, composite: CompositeLike = "epsilon_gamma_box") -> List[str]:
    """The op types that stop ``model`` from being explained with ``composite`` (empty when
    nothing does; see ``blockers`` for problems that are not an op's)."""
    return [row.op_type for row in op_coverage(model, composite) if row.blocking]


def blockers(model: ModelLike, composite: CompositeLike = "epsilon_gamma_box",
             maxpool: Optional[str] = None) -> List[Blocker]:
    """Everything that stops ``model`` from being explained with ``composite`` (empty: nothing)."""
    return assess(model, composite, maxpool).blockers
