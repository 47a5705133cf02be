"""Builders shared by the handler tests: a one-input model from a node list, and the LRP-0
composite."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lrp_onnx import Composite, Family
from lrp_onnx.rules import LRP0

LRP0_ALL = Composite(((Family("all"), LRP0()),), "winner", "lrp0_all")
BIG = np.iinfo(np.int64).max


def make_model(nodes, x_shape: Sequence, y_shape: Sequence, params: Dict[str, np.ndarray], opset: int = 17,
               output: str = "y") -> onnx.ModelProto:
    """Data input "x" (N, *x_shape), output (N, *y_shape); integer params stay int64."""
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in params.items()]
    graph = helper.make_graph(list(nodes), "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", *y_shape])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
