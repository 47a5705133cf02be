"""Which op types of a model lrp_onnx can explain: every op type with its count, whether a
relevance handler exists, and whether it lies on the relevance path at all (ops off the path,
such as shape arithmetic, need no handler)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import List

from . import ops
from .canonicalize import canonicalize
from .graph import build_graph, relevance_subgraph
from .load import ModelLike, infer_shapes, load_model


@dataclass(frozen=True)
class OpCoverage:
    op_type: str
    count: int               # nodes of this type after canonicalization
    on_path: int             # of which carry relevance
    handled: bool            # a relevance handler is registered

    @property
    def blocking(self) -> bool:
        """The model cannot be explained because of this op type."""
        return self.on_path > 0 and not self.handled


def op_coverage(model: ModelLike) -> List[OpCoverage]:
    """One row per op type of the canonicalized model, sorted by op type."""
    proto = load_model(model)
    canonicalize(proto)
    infer_shapes(proto)
    mg = build_graph(proto)
    sub = relevance_subgraph(mg, ops.data_slots)
    counts = Counter(node.op_type for node in mg.nodes.values())
    on_path = Counter(mg.nodes[name].op_type for name in sub.nodes)
    return [OpCoverage(op, counts[op], on_path[op], op in ops.HANDLERS) for op in sorted(counts)]


def unsupported_ops(model: ModelLike) -> List[str]:
    """The op types that stop ``model`` from being explained (empty when it can be)."""
    return [row.op_type for row in op_coverage(model) if row.blocking]
