"""Export a flax.nnx module (or any JAX function of one array) to ONNX with jax2onnx, checked
against JAX. Needs the ``jax`` extra (jax, flax, jax2onnx)."""
from __future__ import annotations

import os

import numpy as np

#: jax2onnx's default opset (native LayerNormalization and RMSNormalization).
OPSET = 23


def nnx_depth(module) -> int:
    """The number of sub-modules holding parameters of their own: the depth the float32
    roundoff floor counts (exporters.check)."""
    from flax import nnx

    owners = [node for _, node in nnx.iter_graph(module)
              if isinstance(node, nnx.Module) and any(isinstance(v, nnx.Param) for v in vars(node).values())]
    return max(len(owners), 1)


def float64_call(module, fn, x: np.ndarray) -> np.ndarray:
    """``fn(copy, x)`` in 64-bit JAX, with ``copy`` the module with its parameters cast to
    float64 and ``x`` as float64; the module itself is left as it is."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    with jax.enable_x64(True):
        graph, state = nnx.split(module)
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
        return np.asarray(fn(nnx.merge(graph, state), jnp.asarray(x, jnp.float64)))


def _forward(net, inputs):
    return net(inputs)


def jax_float64(module, x: np.ndarray) -> np.ndarray:
    """``module`` run in float64 on ``x`` (``float64_call``, compiled once by nnx.jit)."""
    from flax import nnx

    return float64_call(module, nnx.jit(_forward), x)


def export_flax(module, example: np.ndarray, path, opset: int = OPSET, input_name: str = "input",
                output_name: str = "logits", normalization: str = "auto") -> str:
    """Export ``module`` (a flax.nnx module in inference mode, one array in, one out) at
    ``path`` with ``jax2onnx.to_onnx``: input ``input_name`` of shape (N, *example.shape[1:]),
    batch axis dynamic, output ``output_name``; ``normalization`` is jax2onnx's
    ``normalization_mode`` ("auto", "prefer_native" or "force_decomposed" LayerNorm). Then run
    the file in onnxruntime on ``example`` and check it against JAX with the float32 tolerance
    of ``exporters.check`` (t64: the module in float64, t32: its own float32 output;
    max|ort - t64| <= 4 max|t32 - t64| + 8 * 2^-24 * max|t64| * sqrt(depth)). On a failure
    the file is removed and RuntimeError raised."""
    import jax2onnx
    import onnx
    from flax import nnx

    from .check import check_export

    example = np.asarray(example, np.float32)
    path = os.fspath(path)
    proto = jax2onnx.to_onnx(module, inputs=[("N",) + example.shape[1:]], opset=opset, input_names=[input_name],
                             output_names=[output_name], normalization_mode=normalization)
    del proto.graph.value_info[:]   # jax2onnx 0.17 records NHWC shapes for tensors its layout pass made NCHW
    onnx.save(proto, path)
    expected = np.asarray(nnx.jit(_forward)(module, example))
    check_export(path, {input_name: example}, "JAX", expected, jax_float64(module, example), nnx_depth(module))
    return path
