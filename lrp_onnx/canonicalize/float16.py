"""Pass: compute a float16 / bfloat16 model in float32 (onnxconverter-common's
convert_float_to_float16, with keep_io_types True or False; torch's .half() export).

Every float16/bfloat16 initializer becomes float32 (exact: every half value is a float32
value), every Cast to float16/bfloat16 a Cast to float32 (drop_noop_casts then removes them),
and float16/bfloat16 graph inputs and outputs become float32. The explainer then takes the
input as float32 (a float16 array is cast, exactly) and computes both the forward pass and the
relevance in float32: the only change to the function is that intermediate results are no
longer rounded to 11 significant bits (relative differences of about 1e-3 per layer, measured
in the README's Deployed formats table).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..load import infer_shapes

HALF = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
#: Attributes that name an element type (Cast's ``to``, EyeLike/RandomNormal's ``dtype``).
_TYPE_ATTRS = ("to", "dtype")


def _to_float(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def float16_to_float32(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers. Ensures no float16/bfloat16 initializer, Constant-like
    attribute, element-type attribute, graph input or graph output remains: all are float32.
    Shape inference is re-run when anything changed (the element types recorded for the passes
    after it)."""
    graph = model.graph
    changed = False
    for position, tensor in enumerate(list(graph.initializer)):
        if tensor.data_type in HALF:
            graph.initializer[position].CopyFrom(_to_float(tensor))
            changed = True
    for node in graph.node:
        for attr in node.attribute:
            if attr.name in _TYPE_ATTRS and attr.type == onnx.AttributeProto.INT and attr.i in HALF:
                attr.i = TensorProto.FLOAT
                changed = True
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in HALF:
                attr.t.CopyFrom(_to_float(attr.t))
                changed = True
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type in HALF:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
            changed = True
    if changed:
        del graph.value_info[:]
        infer_shapes(model)
    return changed


def has_half(model: onnx.ModelProto) -> bool:
    """Whether a float16/bfloat16 tensor is anywhere in the model (its inputs, outputs, weights)."""
    graph = model.graph
    return (any(t.data_type in HALF for t in graph.initializer)
            or any(v.type.tensor_type.elem_type in HALF for v in list(graph.input) + list(graph.output)))

