"""Export a Keras 3 model (TensorFlow backend) to ONNX with tf2onnx, checked against Keras.

``tf2onnx.convert.from_keras`` fails on Keras 3 Sequential models (KeyError 'keras_tensor_5',
tensorflow-onnx issue #2448); converting a ``tf.function`` of the model's inference call works
for Sequential and functional models alike, so that is what ``export_keras`` does. Needs the
``keras`` extra (tensorflow-cpu, tf2onnx).

``keras_application`` builds the Keras applications of the README's table (MobileNetV2,
ResNet50, DenseNet121, EfficientNetB0) with seeded random weights and BatchNorm statistics
calibrated on random images of the input domain that the application's ``preprocess_input``
produces (``APPLICATIONS``), as exporters/zoo.py does for torchvision (no weights can be
downloaded here).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Callable, Dict, Tuple

import numpy as np

from lrp_onnx.composites import IMAGENET_HIGH, IMAGENET_LOW, IMAGENET_MEAN, IMAGENET_STD

# TensorFlow 2.21 loaded before triton (which torch's CUDA wheels bring and torch.export and
# torch.compile import) makes that later import crash the process with a segmentation fault;
# loaded after it, both work. Every Keras path of the project goes through this module, so it
# loads triton first (import exporters.keras before tensorflow or keras).
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
OPSET = 17

#: tf2onnx 1.17 deep-copies the whole graph before each of its ONNX optimizers, to restore it when
#: one raises (optimizer.optimize_graph with catch_errors): on ResNet50 that is most of the convert
#: time. convert._convert_common turns it off when this variable is set at all (it compares the
#: variable's name, not its value, with "TRUE"); a failing optimizer then raises instead of being
#: skipped with a warning, which the export reports as it is.
_NO_OPTIMIZER_BACKUPS = "TF2ONNX_CATCH_ERRORS"

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: keras.applications name -> (low, high) per channel of the input domain its preprocess_input
#: gives (from RGB pixels in [0, 255]): "tf" mode x / 127.5 - 1; "caffe" mode BGR minus the
#: ImageNet mean; "torch" mode (x / 255 - mean) / std; EfficientNet takes the pixels themselves
#: and rescales and normalizes inside the model (its Rescaling and Normalization layers).
APPLICATIONS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "MobileNetV2": ((-1.0,) * 3, (1.0,) * 3),
    "ResNet50": (tuple(-m for m in _CAFFE_MEAN_BGR), tuple(255.0 - m for m in _CAFFE_MEAN_BGR)),
    "DenseNet121": (IMAGENET_LOW, IMAGENET_HIGH),
    "EfficientNetB0": ((0.0,) * 3, (255.0,) * 3),
}
#: The smallest input size (square) keras.applications accepts for these models.
MIN_SIZE = 32


def _layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def keras_depth(model) -> int:
    """The number of layers with weights of their own (nested models flattened): the depth the
    float32 roundoff floor counts (exporters.check)."""
    return max(sum(1 for layer in _layers(model) if layer.weights and not hasattr(layer, "layers")), 1)


def _finalize(model):
    """Recompute the state that preprocessing layers derive from their weights (a Normalization
    layer's mean and variance tensors), which ``set_weights`` leaves stale."""
    for layer in _layers(model):
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()


def float64_clone(model):
    """A clone of ``model`` whose layers compute in float64, with the model's weights."""
    import keras

    def as_float64(layer):
        config = layer.get_config()
        config["dtype"] = "float64"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=as_float64)
    clone.set_weights([w.astype(np.float64) for w in model.get_weights()])
    _finalize(clone)
    return clone


def keras_float64(model, x: np.ndarray) -> np.ndarray:
    """``model`` run in float64 on ``x`` (``float64_clone``); the model itself is left as it is."""
    return np.asarray(float64_clone(model)(np.asarray(x, np.float64), training=False))


@contextlib.contextmanager
def _environment(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _captured_constants(concrete) -> Dict[str, np.ndarray]:
    """The tensors a traced function captures by value (eager tensors such as a Keras
    Normalization layer's mean and variance; variables are resource handles, which tf2onnx
    freezes), by the name of the placeholder that stands for each in the graph."""
    import tensorflow as tf

    return {internal.name: external.numpy() for external, internal in concrete.graph.captures
            if internal.dtype != tf.resource}


def _erfc(ctx, node, name, args):
    """tf2onnx handler: Erfc(x) as Sub(1, Erf(x)). tf2onnx 1.17 has none for Erfc, which
    TensorFlow's exact GELU (0.5 x erfc(-x / sqrt 2), Keras' default gelu) uses."""
    from tf2onnx import utils

    node.type = "Erf"
    one = ctx.make_const(utils.make_name(name + "_one"),
                         np.array(1, utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))))
    ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(name + "_erfc"),
                                  inputs=[one.output[0], node.output[0]])


def export_keras(model, example: np.ndarray, path, opset: int = OPSET, input_name: str = "input",
                 output_name: str = "logits", reference=None) -> str:
    """Export ``model`` (one input, one output) at ``path``: tf2onnx on
    ``tf.function(lambda x: model(x, training=False))`` with input ``input_name`` of shape
    (N, *example.shape[1:]) (batch axis dynamic) and output ``output_name``; tensors the
    function captures by value (tf2onnx would make them graph inputs) become initializers, and
    Erfc (the exact GELU) is written as 1 - Erf. Then run the file in onnxruntime on ``example``
    and check it against Keras with the float32 tolerance of ``exporters.check`` (t64: a float64
    clone of the model, t32: Keras' own float32 output; max|ort - t64| <= 4 max|t32 - t64| +
    8 * 2^-24 * max|t64| * sqrt(depth)); ``reference``: that clone (``float64_clone(model)``)
    when the caller has one. On a failure the file is removed and RuntimeError raised."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnx import numpy_helper

    from .check import check_export

    example = np.asarray(example, np.float32)
    path = os.fspath(path)
    forward = tf.function(lambda x: model(x, training=False))
    spec = (tf.TensorSpec((None,) + example.shape[1:], tf.float32, name=input_name),)
    captured = _captured_constants(forward.get_concrete_function(*spec))
    with _environment(_NO_OPTIMIZER_BACKUPS, "raise"):
        proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=opset,
                                                 custom_op_handlers={"Erfc": (_erfc, [])})
    for graph_input in list(proto.graph.input):
        if graph_input.name in captured:
            proto.graph.initializer.append(numpy_helper.from_array(captured[graph_input.name], graph_input.name))
            proto.graph.input.remove(graph_input)
    if [i.name for i in proto.graph.input] != [input_name]:
        raise RuntimeError(f"tf2onnx wrote the inputs {[i.name for i in proto.graph.input]}; export_keras handles "
                           f"models with one input")
    if len(proto.graph.output) != 1:
        raise RuntimeError(f"export_keras handles models with one output, this one has {len(proto.graph.output)}")
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [output_name if name == old else name for name in node.output]
    proto.graph.output[0].name = output_name
    onnx.save(proto, path)
    expected = np.asarray(model(example, training=False))
    reference = float64_clone(model) if reference is None else reference
    exact = np.asarray(reference(example.astype(np.float64), training=False))
    check_export(path, {input_name: example}, "Keras", expected, exact, keras_depth(model))
    return path


def calibrate_batchnorm(model, draw: Callable[[int], np.ndarray], passes: int = 3) -> None:
    """Re-estimate every BatchNormalization's moving mean and variance as the average of the
    batch statistics of ``passes`` forward passes on ``draw(i)`` (torch's momentum=None, as
    exporters.zoo does): the model runs in training mode with each BatchNorm's momentum set to
    i / (i + 1) on pass i and every Dropout's rate to 0 (dropout and stochastic depth as at
    inference); both are restored afterwards."""
    import keras

    layers = _layers(model)
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    momenta, rates = [n.momentum for n in norms], [d.rate for d in drops]
    try:
        for drop in drops:
            drop.rate = 0.0
        for i in range(passes):
            for norm in norms:
                norm.momentum = i / (i + 1)
            model(draw(i), training=True)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for drop, rate in zip(drops, rates):
            drop.rate = rate


def application_inputs(name: str, n: int, size: int = MIN_SIZE, seed: int = 0) -> np.ndarray:
    """``n`` random images (N, size, size, 3), float32, uniform in ``APPLICATIONS[name]``'s box."""
    low, high = (np.asarray(bound, np.float32) for bound in APPLICATIONS[name])
    return (low + (high - low) * np.random.default_rng(seed).random((n, size, size, 3))).astype(np.float32)


def keras_application(name: str, size: int = MIN_SIZE, seed: int = 0, classes: int = 10):
    """keras.applications' ``name`` (a key of APPLICATIONS) for (N, size, size, 3) inputs with
    ``classes`` logits (no classifier activation): weights from keras.utils.set_random_seed(seed);
    EfficientNet's Normalization layer set to the ImageNet mean and variance (std^2), the
    normalization its trained weights apply (without their extra Rescaling, an artefact of the
    weight conversion: keras.applications.efficientnet); then ``calibrate_batchnorm`` on three
    batches of 8 ``application_inputs``."""
    import keras

    if name not in APPLICATIONS:
        raise ValueError(f"{name!r} is not one of the Keras applications here; choose from {', '.join(APPLICATIONS)}")
    if size < MIN_SIZE:
        raise ValueError(f"keras.applications needs inputs of at least {MIN_SIZE}x{MIN_SIZE}, got {size}")
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=classes,
                                              classifier_activation=None)
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Normalization):
            layer.set_weights([np.asarray(IMAGENET_MEAN, np.float32), np.square(np.asarray(IMAGENET_STD, np.float32)),
                               np.asarray(0, np.int64)])
            layer.finalize_state()
    calibrate_batchnorm(model, lambda i: application_inputs(name, 8, size, seed + 1 + i))
    return model
