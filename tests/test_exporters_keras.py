"""exporters/keras.py: Keras 3 models (Sequential, which tf2onnx's from_keras cannot convert,
and functional) through tf2onnx, checked against Keras; the ``gradient`` composite on the
export against tf.GradientTape.

Tolerances are the float32 envelope of exporters/check.py: with t64 the float64 result (a
float64 clone of the model), t32 Keras' own float32 one and depth the layers with weights,
max|got - t64| <= 4 max|t32 - t64| + 8 * 2^-24 * max|t64| * sqrt(depth). A wrong reference (one
weight moved by 1e-3, the gradient of another class) is far outside it, and each check is
shown to reject one.
"""
import importlib.util
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest

if any(importlib.util.find_spec(name) is None for name in ("tensorflow", "tf2onnx", "keras")):
    pytest.skip("the Keras exporter needs the keras extra (tensorflow-cpu, keras, tf2onnx)", allow_module_level=True)

from exporters import keras as keras_exporter  # noqa: E402  (before tensorflow: see exporters/keras.py)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import lrp_onnx  # noqa: E402
from exporters.check import float32_tolerance  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import invariance  # noqa: E402

RNG = np.random.default_rng(0)


def sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, bias_initializer="random_normal"),
                             keras.layers.BatchNormalization(beta_initializer="random_normal",
                                                             moving_mean_initializer="random_normal"),
                             keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(4)])


@pytest.fixture(scope="module")
def functional(tmp_path_factory):
    """The invariance network in Keras and its export: (model, path)."""
    model = invariance.keras_model(invariance.weights())
    path = str(tmp_path_factory.mktemp("keras") / "net.onnx")
    return model, keras_exporter.export_keras(model, invariance.inputs().transpose(0, 2, 3, 1), path)


def test_a_sequential_model_exports_with_a_named_input_and_a_dynamic_batch(tmp_path):
    model = sequential()
    path = keras_exporter.export_keras(model, RNG.normal(size=(2, 6, 6, 2)), tmp_path / "seq.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["logits"]
    x = RNG.normal(size=(5, 6, 6, 2)).astype(np.float32)
    got = session.run(None, {"input": x})[0]
    want, exact = np.asarray(model(x, training=False)), keras_exporter.keras_float64(model, x)
    assert np.abs(got - exact).max() <= float32_tolerance(want, exact, keras_exporter.keras_depth(model))


def test_the_export_check_rejects_a_function_that_differs(tmp_path, monkeypatch):
    """An export whose largest weight tensor has one entry moved by 1e-3 (tf2onnx's result
    patched, Keras left as it is): the check raises and removes the file."""
    import tf2onnx
    from onnx import numpy_helper

    real = tf2onnx.convert.from_function

    def moved(*args, **kwargs):
        proto, storage = real(*args, **kwargs)
        tensor = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        value = numpy_helper.to_array(tensor).copy()
        value.flat[0] += 1e-3
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        return proto, storage

    monkeypatch.setattr(tf2onnx.convert, "from_function", moved)
    with pytest.raises(RuntimeError, match="differs from Keras"):
        keras_exporter.export_keras(sequential(), RNG.normal(size=(2, 6, 6, 2)), tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()


def gradient_tape(model, x, target):
    """d logits[target] / dx per sample, in the model's dtype."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(model(x, training=False) * tf.one_hot(target, invariance.CLASSES, dtype=x.dtype))
    return tape.gradient(score, x).numpy()


def test_the_gradient_composite_equals_tf_gradient_tape(functional):
    model, path = functional
    x = invariance.inputs().transpose(0, 2, 3, 1)
    target = np.array([0, 3, 1, 4])
    got = lrp_onnx.Explainer(path, "gradient").explain(x, target=target).relevance
    exact = gradient_tape(keras_exporter.float64_clone(model), x.astype(np.float64), target)
    tolerance = float32_tolerance(gradient_tape(model, x, target), exact, keras_exporter.keras_depth(model))
    assert np.abs(got - exact).max() <= tolerance
    wrong = gradient_tape(keras_exporter.float64_clone(model), x.astype(np.float64), (target + 1) % invariance.CLASSES)
    assert np.abs(wrong - exact).max() > tolerance


def test_captured_constants_become_initializers_and_the_exact_gelu_exports(tmp_path):
    """A Normalization layer with a given mean and variance (eager tensors the tf.function
    captures, which tf2onnx would make graph inputs) and Keras' default, exact GELU (TensorFlow's
    Erfc, which tf2onnx 1.17 cannot convert: written as 1 - Erf); the gradient composite on the
    export equals tf.GradientTape's."""
    import onnx

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Normalization(mean=[1, 2, 3, 4, 5], variance=[1, 4, 9, 1, 4]),
                              keras.layers.Dense(8, activation="gelu", bias_initializer="random_normal"),
                              keras.layers.Dense(invariance.CLASSES)])
    x = RNG.normal(size=(3, 5)).astype(np.float32) * 3
    path = keras_exporter.export_keras(model, x, tmp_path / "gelu.onnx")
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert "Erf" in {n.op_type for n in proto.graph.node} and "Erfc" not in {n.op_type for n in proto.graph.node}
    target = np.array([0, 1, 2])
    got = lrp_onnx.Explainer(path, "gradient").explain(x, target=target).relevance
    exact = gradient_tape(keras_exporter.float64_clone(model), x.astype(np.float64), target)
    assert np.abs(got - exact).max() <= float32_tolerance(gradient_tape(model, x, target), exact, 2)


def test_calibrate_batchnorm_averages_the_batch_statistics():
    """moving mean / variance = the mean over the passes of each batch's mean / (biased)
    variance, and the layer's momentum is restored."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9)])
    batches = [RNG.normal(loc=i, size=(16, 3)).astype(np.float32) for i in range(3)]
    keras_exporter.calibrate_batchnorm(model, lambda i: batches[i], passes=3)
    norm = model.layers[0]
    mean, variance = (np.asarray(v) for v in (norm.moving_mean, norm.moving_variance))
    np.testing.assert_allclose(mean, np.mean([b.mean(0) for b in batches], 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, np.mean([b.var(0) for b in batches], 0), rtol=1e-5)
    assert norm.momentum == 0.9
