"""Small lookups over an onnx.GraphProto shared by the canonicalization passes."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper


def initializers(graph: onnx.GraphProto) -> Dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def constant_value(graph: onnx.GraphProto, name: str) -> Optional[np.ndarray]:
    """The value of an initializer (after the Constant pass every constant is one), else None."""
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def consumers(graph: onnx.GraphProto) -> Dict[str, List[Tuple[onnx.NodeProto, int]]]:
    uses = defaultdict(list)
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                uses[name].append((node, slot))
    return uses


def producers(graph: onnx.GraphProto) -> Dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def output_names(graph: onnx.GraphProto) -> set:
    return {o.name for o in graph.output}


def rank_of(graph: onnx.GraphProto, name: str) -> Optional[int]:
    """The rank recorded by shape inference for a tensor, or None if unknown."""
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def rename_uses(graph: onnx.GraphProto, old: str, new: str, producers_too: bool = False) -> None:
    """Make every node that reads ``old`` read ``new`` instead (and, with ``producers_too``, the
    node that writes ``old`` write ``new``: the tensor renamed)."""
    for node in graph.node:
        slots = (node.input, node.output) if producers_too else (node.input,)
        for names in slots:
            for slot, name in enumerate(names):
                if name == old:
                    names[slot] = new


def fresh_name(graph: onnx.GraphProto, hint: str) -> str:
    taken = {t.name for t in graph.initializer} | {n for node in graph.node for n in node.output}
    taken |= {i.name for i in graph.input}
    k = 0
    while f"{hint}_{k}" in taken:
        k += 1
    return f"{hint}_{k}"


def add_initializer(graph: onnx.GraphProto, array: np.ndarray, hint: str) -> str:
    name = fresh_name(graph, hint)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | output_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
