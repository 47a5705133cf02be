"""The model's inputs, and the relevance sources: where relevance is read (DESIGN.md section 8).

Every graph input that is not an initializer is a model input, with its name, element type and
shape (sizes after the batch axis may be symbolic: one explainer takes any sequence length).
Relevance is read at the *sources*:

- a float32 input carries relevance itself (an image);
- an integer input (token ids) starts embedding lookups: Gather from a constant 2-D float table
  along axis 0. The lookup's output (N, T, H) is the source, named after its table (word,
  position, token type embeddings); its relevance per token is the sum over the hidden axis.
  An integer input that feeds no table (an attention mask) carries no relevance.

A lookup shared by the batch (the position embedding of ids (1, T)) is expanded to the batch
first, so that each sample's position relevance is its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import InputError
from .graph import FLOAT_TYPES, value_dims

#: Prefix of the nodes and tensors that give a shared lookup its batch axis.
EXPAND_PREFIX = "lrp_source/"


@dataclass(frozen=True)
class ModelInput:
    """A graph input: name, ONNX element type and dims (int, or str/None where symbolic)."""

    name: str
    elem_type: int
    shape: Tuple

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    def describe(self) -> str:
        dims = ", ".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name!r} ({TensorProto.DataType.Name(self.elem_type).lower()}[{dims}])"


@dataclass(frozen=True)
class Source:
    """Where relevance is read: ``tensor``, under ``name`` (the input's name, or the table's
    for an embedding lookup). ``table``, ``rows``: the embedding table and its size (None for a
    float input); ``indices``: the model input that indexes the table directly (its ids are
    checked against ``rows``), if any."""

    name: str
    tensor: str
    table: Optional[str] = None
    rows: Optional[int] = None
    indices: Optional[str] = None

    @property
    def is_embedding(self) -> bool:
        return self.table is not None


def model_inputs(model: onnx.ModelProto) -> List[ModelInput]:
    """The graph inputs that are not initializers, in the model's order."""
    constants = {t.name for t in model.graph.initializer}
    return [ModelInput(i.name, i.type.tensor_type.elem_type, value_dims(i) or ()) for i in model.graph.input
            if i.name not in constants]


def _lookups(model: onnx.ModelProto) -> List[Tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(Gather node, table) of every embedding lookup: a Gather along axis 0 of a constant 2-D
    float table with indices that are not constant."""
    tables = {t.name: t for t in model.graph.initializer
              if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    constants = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if (node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.input[0] in tables
                and node.input[1] not in constants and axis == 0):
            found.append((node, tables[node.input[0]]))
    return found


def add_sources(model: onnx.ModelProto) -> List[Source]:
    """The relevance sources of a canonical, shape-inferred model (float inputs first, then the
    lookups in model order). A lookup shared by the batch (its ids do not depend on the
    values of any input: position ids from Range or a constant buffer, of shape (1, T) or (T,))
    is expanded to the batch in ``model`` (which is modified: infer its shapes again), and the
    expanded tensor is its source."""
    shapes = {vi.name: value_dims(vi) for vi in model.graph.value_info}
    inputs = model_inputs(model)
    sources = [Source(i.name, i.name) for i in inputs if i.is_float]
    lookups = _lookups(model)
    counts: Dict[str, int] = {}
    for _, table in lookups:
        counts[table.name] = counts.get(table.name, 0) + 1
    input_names = {i.name for i in inputs}
    value_dependent = _value_dependent(model)
    batched_rank = len(inputs[0].shape) + 1 if inputs else None   # (N, T) ids -> (N, T, H)
    for node, table in lookups:
        tensor = node.output[0]
        rank = len(shapes[tensor]) if shapes.get(tensor) is not None else None
        if inputs and inputs[0].shape[:1] != (1,) and node.input[1] not in value_dependent and rank is not None:
            if rank == batched_rank:
                tensor = _expand_to_batch(model, tensor, inputs[0].name, unsqueeze=False)
            elif rank == batched_rank - 1:
                tensor = _expand_to_batch(model, tensor, inputs[0].name, unsqueeze=True)
        name = table.name if counts[table.name] == 1 else node.output[0]
        indices = node.input[1] if node.input[1] in input_names else None
        sources.append(Source(name, tensor, table.name, int(table.dims[0]), indices))
    return sources


def _value_dependent(model: onnx.ModelProto) -> Set[str]:
    """The tensors that depend on the values of a model input, not only on its shape (through
    Shape or Size); the nodes are in topological order, as ONNX requires."""
    found = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("Shape", "Size") and any(name in found for name in node.input):
            found.update(node.output)
    return found


def _expand_to_batch(model: onnx.ModelProto, tensor: str, batch_of: str, unsqueeze: bool) -> str:
    """Insert ``Expand(tensor, [N] + shape(tensor)[1:])`` (N: the batch size of input
    ``batch_of``; ``unsqueeze``: a batch axis is added first) after the node that makes
    ``tensor``, and make every consumer read it; returns the expanded tensor's name."""
    part = {p: f"{EXPAND_PREFIX}{tensor}/{p}" for p in ("axis", "batched", "batch", "rest", "shape", "expanded")}
    nodes = list(model.graph.node)
    at = next(i for i, node in enumerate(nodes) if tensor in node.output) + 1
    for node in nodes:
        for slot, name in enumerate(node.input):
            if name == tensor:
                node.input[slot] = part["expanded"]
    added = []
    if unsqueeze:
        model.graph.initializer.append(helper.make_tensor(part["axis"], TensorProto.INT64, [1], [0]))
        added.append(helper.make_node("Unsqueeze", [tensor, part["axis"]], [part["batched"]], name=part["batched"]))
        tensor = part["batched"]
    added += [
        helper.make_node("Shape", [batch_of], [part["batch"]], name=part["batch"], start=0, end=1),
        helper.make_node("Shape", [tensor], [part["rest"]], name=part["rest"], start=1),
        helper.make_node("Concat", [part["batch"], part["rest"]], [part["shape"]], name=part["shape"], axis=0),
        helper.make_node("Expand", [tensor, part["shape"]], [part["expanded"]], name=part["expanded"]),
    ]
    nodes[at:at] = added
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return part["expanded"]


def read_feeds(inputs: Sequence[ModelInput], x, sources: Sequence[Source] = ()) -> Dict[str, np.ndarray]:
    """The arrays to run the model on, checked: ``x`` is one array (a one-input model) or a
    dict {input name: array}. Float inputs take any real dtype (cast to float32, finite);
    integer inputs (token ids) need integer arrays within the tables they index. Static sizes
    must match, and a symbolic size (the batch, "sequence") must be the same in every input."""
    names = [i.name for i in inputs]
    if isinstance(x, Mapping):
        missing = [i.describe() for i in inputs if i.name not in x]
        if missing:
            raise InputError(f"missing model input(s) {', '.join(missing)}: pass every input of the model in the dict")
        unknown = [k for k in x if k not in names]
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the model's inputs are {names}")
        given = dict(x)
    elif len(inputs) != 1:
        raise InputError(f"the model has {len(inputs)} inputs, {', '.join(i.describe() for i in inputs)}: "
                         f"pass a dict {{name: array}}")
    else:
        given = {names[0]: x}
    rows = {s.indices: (s.rows, s.table) for s in sources if s.indices}
    arrays = {i.name: _array(i, given[i.name], rows.get(i.name), len(inputs) == 1) for i in inputs}
    _check_sizes(inputs, arrays)
    return arrays


def _array(meta: ModelInput, value, rows, alone: bool) -> np.ndarray:
    what = "input" if alone else f"input {meta.name!r}"
    x = np.asarray(value)
    if meta.is_float:
        if x.dtype.kind not in "fiu":
            raise InputError(f"{what} must be a numeric array, got dtype {x.dtype}")
    elif meta.dtype.kind in "iu" and x.dtype.kind not in "iu":
        raise InputError(f"{what} holds integers ({meta.dtype}, e.g. token ids): pass an integer array, "
                         f"got dtype {x.dtype}")
    elif meta.dtype.kind == "b" and x.dtype.kind not in "biu":
        raise InputError(f"{what} is boolean: pass a bool or 0/1 integer array, got dtype {x.dtype}")
    expected = tuple(d if isinstance(d, int) and d > 0 else (d or "?") for d in meta.shape)
    if x.ndim != len(meta.shape):
        raise InputError(f"{what} has shape {x.shape}; the model expects rank {len(meta.shape)}: {expected}")
    for axis, (got, want) in enumerate(zip(x.shape, meta.shape)):
        if isinstance(want, int) and want > 0 and got != want:
            raise InputError(f"{what} has shape {x.shape}; the model expects {expected} (axis {axis})")
    if x.shape[0] == 0:
        raise InputError("the input batch is empty")
    if meta.is_float:
        if not np.all(np.isfinite(x)):
            raise InputError(f"{what} contains NaN or Inf values")
        with np.errstate(over="ignore"):
            x = x.astype(np.float32, copy=False)   # documented: integer and float64 inputs are cast
        if not np.all(np.isfinite(x)):
            raise InputError(f"{what} has values beyond float32's range (|x| > 3.4e38)")
        return x
    if x.dtype.kind in "iu" and x.size and meta.dtype.kind in "iu":
        info = np.iinfo(meta.dtype)
        if x.min() < info.min or x.max() > info.max:
            raise InputError(f"{what} has values outside {meta.dtype}'s range")
    if rows is not None and x.size and (x.min() < -rows[0] or x.max() >= rows[0]):
        raise InputError(f"{what} has ids from {x.min()} to {x.max()}; its embedding table {rows[1]!r} has "
                         f"{rows[0]} rows (ids 0 to {rows[0] - 1})")
    return x.astype(meta.dtype, copy=False)


def _check_sizes(inputs: Sequence[ModelInput], arrays: Mapping[str, np.ndarray]) -> None:
    """Axis 0 is every input's batch axis; a symbolic dim name means one size in all inputs."""
    seen: Dict[object, Tuple[str, int]] = {}
    for meta in inputs:
        for axis, size in enumerate(arrays[meta.name].shape):
            symbol = "the batch axis" if axis == 0 else meta.shape[axis]
            if not isinstance(symbol, str):
                continue
            if symbol in seen and seen[symbol][1] != size:
                other, expected = seen[symbol]
                label = symbol if axis == 0 else f"axis {axis} ({symbol!r})"
                raise InputError(f"input {meta.name!r} has size {size} on {label}, but input {other!r} has "
                                 f"{expected}: they must match")
            seen.setdefault(symbol, (meta.name, size))
