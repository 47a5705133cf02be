"""Keras applications through tf2onnx (exporters/keras.py): MobileNetV2, ResNet50, DenseNet121
and EfficientNetB0 (keras.applications, seeded random weights, BatchNorm statistics calibrated
on random images of each application's input domain, 32x32, the smallest size they accept) and
a Keras MLP with LayerNormalization and the exact GELU (the models: benchmarks/
keras_applications.py, which prints the README's table). Each export compiles with
epsilon_plus_flat, gradient and epsilon_gamma_box (bounds: the application's input domain,
given for the raw input: EfficientNet rescales and normalizes inside the model and the bounds
are carried through, ops/bounds.py); a batch of 2 gives finite relevance, the explainer's output
equals onnxruntime's forward of the export, and the gradient composite's relevance equals
tf.GradientTape's gradient.

Tolerances: the float32 envelope of exporters/check.py (tests/tolerances.py), with t64 the
float64 clone of the Keras model (exporters.keras.float64_clone) and t32 Keras' own float32 run
of the same function: max|got - t64| <= 4 max|t32 - t64| + 8 * 2^-24 * max|t64| * sqrt(depth).
The gradient of another class is far outside it (shown on MobileNetV2).
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
import lrp_onnx  # noqa: E402
from tolerances import within_envelope  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from keras_applications import CLASSES, TARGET, gradient_tape, model_and_inputs  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Factory: name -> (model, its float64 clone, onnx path, the batch of 2 to explain)."""
    cache = {}

    def get(name):
        if name not in cache:
            model, x = model_and_inputs(name)
            clone = keras_exporter.float64_clone(model)
            path = keras_exporter.export_keras(model, x, tmp_path_factory.mktemp(name) / f"{name}.onnx", reference=clone)
            cache[name] = model, clone, path, x
        return cache[name]

    return get


def check_application(exported, name, box):
    model, clone, path, x = exported(name)
    depth = keras_exporter.keras_depth(model)
    ref32, ref64 = np.asarray(model(x, training=False)), np.asarray(clone(x.astype(np.float64), training=False))
    forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert float(np.abs(ref64).max()) > 1e-3, f"{name}: the calibrated random network's logits vanish"
    assert within_envelope(forward, ref32, ref64, depth, f"{name} export") <= 1
    composites = ["epsilon_plus_flat"]
    if box:
        low, high = keras_exporter.APPLICATIONS[name]
        composites.append({"preset": "epsilon_gamma_box", "low": list(low), "high": list(high)})
    for composite in composites:
        result = lrp_onnx.Explainer(path, composite).explain(x, target=TARGET)
        assert result.relevance.shape == x.shape
        assert np.isfinite(result.relevance).all() and np.abs(result.relevance).max() > 0, f"{name} {composite}"
        assert within_envelope(result.output, ref32, ref64, depth, f"{name} {composite} output") <= 1
        print(f"\n  {name} {composite}: sum(R_in)/R_out = {np.round(result.conservation, 3)}")
    got = lrp_onnx.Explainer(path, "gradient").explain(x, target=TARGET).relevance
    exact = gradient_tape(clone, x.astype(np.float64), TARGET)
    assert within_envelope(got, gradient_tape(model, x, TARGET), exact, depth, f"{name} gradient") <= 1
    return clone, x, exact, depth


def test_mobilenet_v2(exported):
    """Also: the gradient of another class is rejected by the same envelope."""
    clone, x, exact, depth = check_application(exported, "MobileNetV2", box=False)
    wrong = gradient_tape(clone, x.astype(np.float64), (TARGET + 1) % CLASSES)
    model = exported("MobileNetV2")[0]
    assert within_envelope(wrong, gradient_tape(model, x, TARGET), exact, depth, "MobileNetV2 wrong class") > 1


def test_efficientnet_b0_with_bounds_for_the_raw_pixels(exported):
    """The bounds [0, 255] are given for the raw input and carried through the model's
    Rescaling(1/255) and Normalization to the first Conv."""
    check_application(exported, "EfficientNetB0", box=True)


@pytest.mark.slow
def test_resnet50(exported):
    check_application(exported, "ResNet50", box=False)


@pytest.mark.slow
def test_densenet121(exported):
    """Its BatchNorms after a Concat cannot be folded: tf2onnx writes them as Mul -> Add."""
    check_application(exported, "DenseNet121", box=False)


def test_keras_layernorm_mlp(exported):
    model, clone, path, x = exported("LayerNormMLP")
    assert [n.op_type for n in lrp_onnx.Explainer(path, "gradient").forward_model.graph.node].count("LayerNormalization") == 2
    check_application(exported, "LayerNormMLP", box=False)
