"""Export a Keras 3 model (TensorFlow backend) to ONNX with tf2onnx, checked against Keras.

``tf2onnx.convert.from_keras`` fails on Keras 3 Sequential models (KeyError 'keras_tensor_5',
tensorflow-onnx issue #2448); converting a ``tf.function`` of the model's inference call works
for Sequential and functional models alike, so that is what ``export_keras`` does. Needs the
``keras`` extra (tensorflow-cpu, tf2onnx).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

# TensorFlow 2.21 loaded before triton (which torch's CUDA wheels bring and torch.export and
# torch.compile import) makes that later import crash the process with a segmentation fault;
# loaded after it, both work. Every Keras path of the project goes through this module, so it
# loads triton first (import exporters.keras before tensorflow or keras).
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
OPSET = 17


def keras_depth(model) -> int:
    """The number of layers with weights of their own (nested models flattened): the depth the
    float32 roundoff floor counts (exporters.check)."""
    return max(sum(1 for layer in model._flatten_layers(include_self=False, recursive=True)
                   if layer.weights and not hasattr(layer, "layers")), 1)


def float64_clone(model):
    """A clone of ``model`` whose layers compute in float64, with the model's weights."""
    import keras

    def as_float64(layer):
        config = layer.get_config()
        config["dtype"] = "float64"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=as_float64)
    clone.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return clone


def keras_float64(model, x: np.ndarray) -> np.ndarray:
    """``model`` run in float64 on ``x`` (``float64_clone``); the model itself is left as it is."""
    return np.asarray(float64_clone(model)(np.asarray(x, np.float64), training=False))


def export_keras(model, example: np.ndarray, path, opset: int = OPSET, input_name: str = "input",
                 output_name: str = "logits") -> str:
    """Export ``model`` (one input, one output) at ``path``: tf2onnx on
    ``tf.function(lambda x: model(x, training=False))`` with input ``input_name`` of shape
    (N, *example.shape[1:]) (batch axis dynamic) and output ``output_name``; then run the file
    in onnxruntime on ``example`` and check it against Keras with the float32 tolerance of
    ``exporters.check`` (t64: a float64 clone of the model, t32: Keras' own float32 output;
    max|ort - t64| <= 4 max|t32 - t64| + 8 * 2^-24 * max|t64| * sqrt(depth)). On a failure
    the file is removed and RuntimeError raised."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from .check import check_export

    example = np.asarray(example, np.float32)
    path = os.fspath(path)
    forward = tf.function(lambda x: model(x, training=False))
    spec = (tf.TensorSpec((None,) + example.shape[1:], tf.float32, name=input_name),)
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=opset)
    if len(proto.graph.output) != 1:
        raise RuntimeError(f"export_keras handles models with one output, this one has {len(proto.graph.output)}")
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [output_name if name == old else name for name in node.output]
    proto.graph.output[0].name = output_name
    onnx.save(proto, path)
    expected = np.asarray(model(example, training=False))
    check_export(path, {input_name: example}, "Keras", expected, keras_float64(model, example), keras_depth(model))
    return path
