"""Load an ONNX model from a path or a ModelProto, validate it and infer its shapes."""
from __future__ import annotations

import itertools
import math
import os
from typing import Union

import onnx
from onnx import external_data_helper, helper, shape_inference, version_converter

from .errors import ModelError

#: The explainer needs ScatterElements(reduction="add") and AveragePool dilations: opset 17+.
MIN_OPSET = 17

ModelLike = Union[str, "os.PathLike[str]", onnx.ModelProto]


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("the model imports no default-domain opset")


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Read ``model`` (path or proto), check it, lift it to opset >= MIN_OPSET and run strict
    shape inference. The caller's proto is never modified."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    elif isinstance(model, (str, os.PathLike)):
        proto = _read(os.fspath(model))
    else:
        raise ModelError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    unloaded = next(iter(external_tensors(proto)), None)
    if unloaded is not None:
        raise ModelError(f"the model's tensor {unloaded[0]!r} is stored in the external data file {unloaded[1]!r}, "
                         f"which was not loaded: pass the model's path, or onnx.load it from its directory")

    if not proto.graph.node:
        raise ModelError("the model's graph has no nodes (is the file an ONNX model?)")
    if any(n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx") for n in proto.graph.node):
        # onnx's checker calls GroupNormalization-18 deprecated and its shape inference infers
        # nothing for version 21: rewrite it first (canonicalize/group_norm.py)
        from .canonicalize import constants_to_initializers, normalize_groups
        constants_to_initializers(proto)
        normalize_groups(proto)
    try:
        onnx.checker.check_model(skeleton(proto))
    except Exception as exc:
        raise ModelError(f"the model is not valid ONNX: {exc}") from None

    if default_opset(proto) < MIN_OPSET:
        try:
            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as exc:
            raise ModelError(
                f"the model uses opset {default_opset(proto)} and could not be converted to {MIN_OPSET}: {exc}"
            ) from None
    infer_shapes(proto)
    return proto


def external_tensors(model: onnx.ModelProto):
    """(name, location) of the tensors (initializers, Constant values) whose data lives in an
    external file and is not loaded."""
    attributes = (a.t for node in model.graph.node for a in node.attribute if a.HasField("t"))
    for tensor in itertools.chain(model.graph.initializer, attributes):
        if external_data_helper.uses_external_data(tensor):
            yield tensor.name, external_data_helper.ExternalDataInfo(tensor).location


def _read(path: str) -> onnx.ModelProto:
    """The model at ``path`` with its external data (if any) loaded from beside it."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}" + (" (it is a directory)" if os.path.isdir(path) else ""))
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises several types for garbage
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    base = os.path.dirname(os.path.abspath(path))
    for name, location in external_tensors(proto):
        if not os.path.isfile(os.path.join(base, location)):
            raise ModelError(f"{path}: tensor {name!r} is stored in the external data file {location!r}, "
                             f"which is missing (looked in {base})")
    try:
        external_data_helper.load_external_data_for_model(proto, base)
    except Exception as exc:
        raise ModelError(f"{path}: its external data could not be read ({type(exc).__name__}: {exc})") from None
    return proto


#: protobuf cannot serialise a message of 2 GiB or more; larger models keep their tensors in
#: external data files.
PROTOBUF_LIMIT = 2 ** 31


def serialized_size(model: onnx.ModelProto) -> int:
    """The model's serialised size in bytes, summed per tensor (works above the limit)."""
    skel = skeleton(model, limit=-1)   # every initializer out, counted one by one
    return skel.ByteSize() + sum(t.ByteSize() for t in model.graph.initializer)


#: Initializers with more elements than this are left out of the skeleton.
_SKELETON_LIMIT = 1024


def skeleton(model: onnx.ModelProto, limit: int = _SKELETON_LIMIT) -> onnx.ModelProto:
    """The model with its large initializers turned into typed graph inputs: the same
    structure for the checker and shape inference, without serialising the weights (which
    costs seconds for VGG-16 and fails above protobuf's 2 GB)."""
    skel = onnx.ModelProto()
    skel.ir_version = model.ir_version
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)   # model-local functions (canonicalize/rmsnorm.py)
    graph, source = skel.graph, model.graph
    graph.name = source.name or "graph"
    for part in ("node", "input", "output", "value_info"):
        getattr(graph, part).extend(getattr(source, part))
    declared = {i.name for i in source.input}
    for init in source.initializer:
        if math.prod(init.dims) > limit:
            if init.name not in declared:
                graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            graph.initializer.append(init)
    return skel


def infer_shapes(model: onnx.ModelProto) -> None:
    """onnx shape inference (strict, with data propagation for Reshape targets), run on the
    skeleton; the inferred value_info and output types are written into ``model``."""
    try:
        inferred = shape_inference.infer_shapes(skeleton(model), strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed: {exc}") from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    outputs = {o.name: o for o in inferred.graph.output}
    for output in model.graph.output:
        output.CopyFrom(outputs[output.name])
