"""Canonicalization: small graph-to-graph passes run before the relevance graph is built.

Each pass mutates the model in place, states what it requires and ensures in its docstring,
returns whether it changed anything, and leaves the model's outputs numerically unchanged
(tests/test_canonicalize.py checks each one with onnxruntime).
"""
from typing import Callable, List, Tuple

import onnx

from .batchnorm import fold_batchnorm, fold_batchnorm_forward
from .constants import constants_to_initializers
from .gemm import normalize_gemm
from .identity import drop_identity
from .matmul_add import fuse_matmul_add
from .names import assign_node_names
from .shapes import fold_shape_arithmetic
from .softmax import strip_output_softmax

Pass = Callable[[onnx.ModelProto], bool]

#: The passes in the order they run (later passes rely on earlier ones).
PASSES: Tuple[Pass, ...] = (
    assign_node_names,
    constants_to_initializers,
    fold_shape_arithmetic,
    drop_identity,
    strip_output_softmax,
    normalize_gemm,
    fuse_matmul_add,
    fold_batchnorm,
    fold_batchnorm_forward,
)


def canonicalize(model: onnx.ModelProto) -> List[str]:
    """Run every pass in place; returns the names of the passes that changed the model."""
    return [p.__name__ for p in PASSES if p(model)]
