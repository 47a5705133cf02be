"""Canonicalization: small graph-to-graph passes run before the relevance graph is built.

Each pass mutates the model in place, states what it requires and ensures in its docstring,
returns whether it changed anything, and leaves the model's outputs numerically unchanged
(tests/test_canonicalize.py checks each one with onnxruntime).
"""
from typing import Callable, List, Tuple

import onnx

from .affine import fold_affine
from .batchnorm import fold_batchnorm, fold_batchnorm_forward
from .casts import drop_noop_casts
from .constants import constants_to_initializers
from .dequantize import fold_dequantize_constants
from .float16 import float16_to_float32
from .gelu import fuse_gelu_tanh
from .gemm import normalize_gemm
from .global_pool import global_pool_to_reduce_mean
from .group_norm import normalize_groups
from .hardswish import fuse_hardswish
from .identity import drop_identity
from .layernorm import fuse_layernorm
from .matmul_add import fuse_matmul_add
from .names import assign_node_names
from .ort_fused import unfuse_ort_contrib
from .qdq_clip import qdq_to_clip
from .qoperator import expand_qoperators
from .rmsnorm import fuse_rmsnorm
from .shapes import fold_shape_arithmetic
from .softmax import strip_output_softmax
from .softmax_decomposed import fuse_softmax
from .transpose_pairs import cancel_transposes

Pass = Callable[[onnx.ModelProto], bool]

#: The passes in the order they run (later passes rely on earlier ones).
PASSES: Tuple[Pass, ...] = (
    assign_node_names,
    constants_to_initializers,
    float16_to_float32,       # deployed formats (README, Deployed formats): float16 -> float32,
    unfuse_ort_contrib,       # onnxruntime EXTENDED fusions -> ONNX ops,
    expand_qoperators,        # QOperator / integer ops -> DQ -> float op -> Q,
    fold_dequantize_constants,  # quantized weights -> float constants,
    qdq_to_clip,              # activation Q -> DQ pairs -> Clip to the integer range
    fold_shape_arithmetic,
    drop_identity,
    drop_noop_casts,
    cancel_transposes,
    normalize_groups,         # InstanceNorm / GroupNorm -> LayerNormalization per group
    global_pool_to_reduce_mean,  # tf2onnx's GlobalAveragePool over (N, T, D)'s last axis -> ReduceMean
    fuse_layernorm,
    fuse_rmsnorm,
    fuse_gelu_tanh,
    fuse_hardswish,
    fuse_softmax,
    strip_output_softmax,
    normalize_gemm,
    fold_affine,
    fuse_matmul_add,
    fold_batchnorm,
    fold_batchnorm_forward,
)


def canonicalize(model: onnx.ModelProto) -> List[str]:
    """Run every pass in place; returns the names of the passes that changed the model."""
    return [p.__name__ for p in PASSES if p(model)]
