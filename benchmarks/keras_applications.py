"""The Keras applications table of the README (One network, one explanation: Keras applications).

    .venv/bin/python benchmarks/keras_applications.py [--size 224] [--models MobileNetV2,...] [--markdown]

For each of MobileNetV2, ResNet50, DenseNet121 and EfficientNetB0 (exporters.keras.keras_application:
seeded random weights, BatchNorm calibrated on random images of the application's input domain)
and a Keras MLP with LayerNormalization and the exact GELU (``layernorm_mlp``): export through
tf2onnx, compile and explain a batch of 2 with epsilon_plus_flat, epsilon_gamma_box (bounds: the
application's input domain, given for the raw input) and gradient, and print export and compile
seconds, explain seconds, the explainer's output against Keras in float64 (error / float32
tolerance, exporters/check.py: <= 1 is equal within float32 rounding), the gradient against
tf.GradientTape's (the same ratio) and sum(R_in) / R_out per image.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporters import keras as keras_exporter  # noqa: E402  (before tensorflow: see exporters/keras.py)

import lrp_onnx  # noqa: E402
from exporters.check import envelope_ratio  # noqa: E402

MODELS = tuple(keras_exporter.APPLICATIONS) + ("LayerNormMLP",)
CLASSES = 10
#: The explained class of each of the two images.
TARGET = np.array([1, 2])


def layernorm_mlp():
    """Dense -> LayerNormalization -> exact GELU -> Dense -> LayerNormalization -> Dense on
    (N, 24) inputs, gamma and beta random (tf2onnx: LayerNorm as 13 primitives, GELU's Erfc as
    1 - Erf)."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    norm = dict(beta_initializer="random_normal", gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5))
    return keras.Sequential([keras.Input((24,)), layers.Dense(32, bias_initializer="random_normal"),
                             layers.LayerNormalization(**norm), layers.Activation("gelu"),
                             layers.Dense(32, bias_initializer="random_normal"), layers.LayerNormalization(**norm),
                             layers.Dense(CLASSES, bias_initializer="random_normal")])


def model_and_inputs(name: str, size: int = keras_exporter.MIN_SIZE):
    """(the Keras model, the batch of 2 it is explained on)."""
    if name == "LayerNormMLP":
        return layernorm_mlp(), np.random.default_rng(100).normal(size=(2, 24)).astype(np.float32)
    return keras_exporter.keras_application(name, size), keras_exporter.application_inputs(name, 2, size, seed=100)


def gradient_tape(model, x, target):
    """d logits[target] / dx per sample, in the model's dtype."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(model(x, training=False) * tf.one_hot(target, CLASSES, dtype=x.dtype))
    return tape.gradient(score, x).numpy()


def row(name: str, size: int, folder: str) -> dict:
    """Export, compile and explain ``name``; the table's figures."""
    started = time.perf_counter()
    model, x = model_and_inputs(name, size)
    clone = keras_exporter.float64_clone(model)
    path = keras_exporter.export_keras(model, x, os.path.join(folder, name + ".onnx"), reference=clone)
    export_s = time.perf_counter() - started
    depth = keras_exporter.keras_depth(model)
    ref32, ref64 = np.asarray(model(x, training=False)), np.asarray(clone(x.astype(np.float64), training=False))
    out = {"model": name, "size": size if name != "LayerNormMLP" else 24, "export s": export_s}
    composites = {"epsilon_plus_flat": "epsilon_plus_flat", "gradient": "gradient"}
    if name in keras_exporter.APPLICATIONS:
        low, high = keras_exporter.APPLICATIONS[name]
        composites["epsilon_gamma_box"] = {"preset": "epsilon_gamma_box", "low": list(low), "high": list(high)}
    for label, composite in composites.items():
        started = time.perf_counter()
        explainer = lrp_onnx.Explainer(path, composite)
        compiled = time.perf_counter()
        result = explainer.explain(x, target=TARGET)
        done = time.perf_counter()
        if label == "epsilon_plus_flat":
            out.update({"compile s": compiled - started, "explain s": done - compiled,
                        "output / tol": envelope_ratio(result.output, ref32, ref64, depth)})
        if label == "gradient":
            exact = gradient_tape(clone, x.astype(np.float64), TARGET)
            out["gradient / tol"] = envelope_ratio(result.relevance, gradient_tape(model, x, TARGET), exact, depth)
        else:
            assert np.isfinite(result.relevance).all(), f"{name} {label}: relevance is not finite"
            out[f"{label} sum R_in / R_out"] = " / ".join(f"{c:.3f}" for c in result.conservation)
    return out


COLUMNS = ("model", "size", "export s", "compile s", "explain s", "output / tol", "gradient / tol",
           "epsilon_plus_flat sum R_in / R_out", "epsilon_gamma_box sum R_in / R_out")


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2g}" if value < 1 else f"{value:.1f}"
    return "-" if value is None else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help=f"input size (>= {keras_exporter.MIN_SIZE})")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if args.markdown:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            figures = row(name, args.size, folder)
            cells = [cell(figures.get(c)) for c in COLUMNS]
            print(("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(f"{c}={v}" for c, v in zip(COLUMNS, cells)),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
