"""exporters/jax.py: flax.nnx modules through jax2onnx (native and decomposed LayerNorm),
checked against JAX; the ``gradient`` composite on the export against jax.grad.

Tolerances are the float32 envelope of exporters/check.py: with t64 the float64 result (64-bit
JAX, parameters cast), t32 JAX's own float32 one and depth the modules with parameters,
max|got - t64| <= 4 max|t32 - t64| + 8 * 2^-24 * max|t64| * sqrt(depth). A wrong export (one
weight moved by 1e-3) and a wrong gradient (another class's) are far outside it, and each check
is shown to reject one.
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

jax = pytest.importorskip("jax", reason="the JAX exporter needs the jax extra (jax, flax, jax2onnx)")
pytest.importorskip("flax", reason="the JAX exporter needs the jax extra (jax, flax, jax2onnx)")
jax2onnx = pytest.importorskip("jax2onnx", reason="the JAX exporter needs the jax extra (jax, flax, jax2onnx)")

import lrp_onnx  # noqa: E402
from exporters import jax as jax_exporter  # noqa: E402
from exporters.check import float32_tolerance  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import invariance  # noqa: E402

X = invariance.inputs().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def module():
    return invariance.flax_module(invariance.weights())


@pytest.mark.parametrize("mode, native", [("prefer_native", True), ("force_decomposed", False)])
def test_export_with_a_named_input_a_dynamic_batch_and_either_layernorm(module, tmp_path, mode, native):
    path = jax_exporter.export_flax(module, X[:2], tmp_path / "net.onnx", normalization=mode)
    assert ("LayerNormalization" in {n.op_type for n in onnx.load(path).graph.node}) is native
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["logits"]
    got = session.run(None, {"input": X})[0]
    exact = jax_exporter.jax_float64(module, X)
    assert np.abs(got - exact).max() <= float32_tolerance(np.asarray(module(X)), exact, jax_exporter.nnx_depth(module))


def test_the_export_check_rejects_a_function_that_differs(module, tmp_path, monkeypatch):
    """An export whose largest weight tensor has one entry moved by 1e-3 (jax2onnx's result
    patched, JAX left as it is): the check raises and removes the file."""
    from onnx import numpy_helper

    real = jax2onnx.to_onnx

    def moved(*args, **kwargs):
        proto = real(*args, **kwargs)
        tensor = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        value = numpy_helper.to_array(tensor).copy()
        value.flat[0] += 1e-3
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        return proto

    monkeypatch.setattr(jax2onnx, "to_onnx", moved)
    with pytest.raises(RuntimeError, match="differs from JAX"):
        jax_exporter.export_flax(module, X, tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()


def jax_gradient(module, x, target, x64=False):
    """d logits[target] / dx per sample (in float64 with ``x64``: exporters.jax.float64_call)."""
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def gradient(net, inputs):
        score = lambda v: jnp.sum(net(v) * jax.nn.one_hot(target, invariance.CLASSES, dtype=v.dtype))  # noqa: E731
        return jax.grad(score)(inputs)

    return jax_exporter.float64_call(module, gradient, x) if x64 else np.asarray(gradient(module, jnp.asarray(x)))


def test_the_gradient_composite_equals_jax_grad(module, tmp_path):
    path = jax_exporter.export_flax(module, X, tmp_path / "net.onnx")
    target = np.array([0, 3, 1, 4])
    got = lrp_onnx.Explainer(path, "gradient").explain(X, target=target).relevance
    exact = jax_gradient(module, X, target, x64=True)
    tolerance = float32_tolerance(jax_gradient(module, X, target), exact, jax_exporter.nnx_depth(module))
    assert np.abs(got - exact).max() <= tolerance
    wrong = jax_gradient(module, X, (target + 1) % invariance.CLASSES, x64=True)
    assert np.abs(wrong - exact).max() > tolerance
