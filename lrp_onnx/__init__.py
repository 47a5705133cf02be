"""lrp_onnx: Layer-wise Relevance Propagation compiled into one ONNX model.

    import lrp_onnx
    ex = lrp_onnx.Explainer("model.onnx", composite="epsilon_gamma_box")
    res = ex.explain(x)          # res.relevance, res.output, res.layers
    ex.save("explainer.onnx")    # runs in any onnxruntime, no Python needed
"""
from . import composites, rules
from .compile import compile_explainer
from .composites import AllOf, Composite, First, Family, Index, Name, preset
from .errors import CompositeError, InputError, LRPError, ModelError, UnsupportedOpError
from .explainer import Explainer, Explanation
from .ops import supported_ops
from .rules import LRP0, AlphaBeta, AttnSoftmax, CPConstant, Epsilon, Flat, Gamma, Pass, Uniform, WSquare, ZBox, ZPlus
from .targets import RegionTarget

__version__ = "0.1.0"

__all__ = [
    "Explainer", "Explanation", "RegionTarget", "compile_explainer", "supported_ops",
    "Composite", "AllOf", "Family", "First", "Index", "Name", "preset", "composites", "rules",
    "LRP0", "Epsilon", "Gamma", "ZPlus", "AlphaBeta", "ZBox", "Flat", "WSquare", "Pass", "Uniform", "AttnSoftmax",
    "CPConstant",
    "LRPError", "ModelError", "UnsupportedOpError", "CompositeError", "InputError",
]
