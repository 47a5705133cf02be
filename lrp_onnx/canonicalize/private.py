"""The private domain of the nodes that canonicalization writes where the model's opset has no
standard op for them (RMSNormalization below opset 23, the tanh GELU below opset 20). Each
comes with a model-local function (FunctionProto) of standard ops, which onnxruntime inlines,
so the canonical model and the explainer built on it still run in plain onnxruntime."""
import onnx
from onnx import helper

DOMAIN = "ai.lrp_onnx"


def default_opset(model: onnx.ModelProto) -> int:
    return next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))


def define(model: onnx.ModelProto, function: onnx.FunctionProto) -> None:
    """Add ``function`` (of DOMAIN) and the domain's opset import, once per model."""
    if not any(f.domain == function.domain and f.name == function.name for f in model.functions):
        model.functions.append(function)
    if not any(e.domain == DOMAIN for e in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
