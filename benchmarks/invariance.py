"""One network, one set of weights, written to ONNX by every exporter: the same relevance.

    .venv/bin/python benchmarks/invariance.py [--spellings NAME,...] [--markdown] [--without PASS,...] [--keras-resnet50]

The network: Conv -> BatchNorm -> ReLU, a residual block (Conv -> BatchNorm, Add, ReLU), 2x2
MaxPool, global average pooling, LayerNorm, Linear -> ReLU -> Linear, on (3, 8, 8) inputs, with
seeded random weights. It is built in PyTorch, in Keras 3 and in flax.nnx with the same numbers
(NHWC kernels transposed) and exported as the SPELLINGS below; each spelling is explained with
every composite of COMPOSITES on the same inputs and target classes, and its relevance (NHWC
ones transposed to NCHW) is compared with the TorchScript opset-17 file's. Prints, per spelling
and composite, max|R - R_ref| / max|R_ref|; the README's table comes from here and
tests/test_invariance.py asserts the same at TOLERANCE. Spellings whose framework is not
installed (the ``keras`` and ``jax`` extras) are skipped with a note.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from typing import Callable, Dict, NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lrp_onnx  # noqa: E402
from lrp_onnx.canonicalize import fold_affine  # noqa: E402

C_IN, SIZE, CHANNELS, HIDDEN, CLASSES = 3, 8, 6, 16, 5
#: BatchNorm and LayerNorm epsilon, the same in every framework (Keras' default is 1e-3).
NORM_EPS = 1e-5
COMPOSITES = ("epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1", "epsilon_plus_flat", "gradient",
              "gradient_x_input")
#: max|R - R_ref| / max|R_ref| every spelling must stay within (see README, One network, one explanation).
TOLERANCE = 1e-4
REFERENCE = "torchscript_opset17"


def weights(seed: int = 0) -> Dict[str, np.ndarray]:
    """The network's parameters in PyTorch's layouts (Conv OIHW, Linear (out, in)), float32."""
    rng = np.random.default_rng(seed)

    def conv(c_in):
        return rng.normal(size=(CHANNELS, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))

    def norm(prefix):
        return {prefix + "gamma": rng.uniform(0.5, 1.5, CHANNELS), prefix + "beta": rng.normal(size=CHANNELS) * 0.2,
                prefix + "mean": rng.normal(size=CHANNELS) * 0.2, prefix + "var": rng.uniform(0.5, 1.5, CHANNELS)}

    params = {"conv1": conv(C_IN), "conv1_b": rng.normal(size=CHANNELS) * 0.1, **norm("bn1_"),
              "conv2": conv(CHANNELS), "conv2_b": rng.normal(size=CHANNELS) * 0.1, **norm("bn2_"),
              "ln_gamma": rng.uniform(0.5, 1.5, CHANNELS), "ln_beta": rng.normal(size=CHANNELS) * 0.2,
              "fc1": rng.normal(size=(HIDDEN, CHANNELS)) * np.sqrt(2 / CHANNELS), "fc1_b": rng.normal(size=HIDDEN) * 0.1,
              "fc2": rng.normal(size=(CLASSES, HIDDEN)) * np.sqrt(1 / HIDDEN), "fc2_b": rng.normal(size=CLASSES) * 0.1}
    return {k: v.astype(np.float32) for k, v in params.items()}


def inputs(n: int = 4, seed: int = 1) -> np.ndarray:
    """``n`` ImageNet-normalized random images (pixels uniform in [0, 1]), NCHW."""
    pixels = np.random.default_rng(seed).uniform(0, 1, size=(n, C_IN, SIZE, SIZE))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((pixels - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)).astype(np.float32)


def torch_module(w):
    """The network as a torch.nn.Module (eval mode)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(C_IN, CHANNELS, 3, padding=1), nn.BatchNorm2d(CHANNELS, eps=NORM_EPS)
            self.conv2, self.bn2 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.BatchNorm2d(CHANNELS, eps=NORM_EPS)
            self.pool, self.ln = nn.MaxPool2d(2), nn.LayerNorm(CHANNELS, eps=NORM_EPS)
            self.fc1, self.fc2 = nn.Linear(CHANNELS, HIDDEN), nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            h = torch.relu(h + self.bn2(self.conv2(h)))
            return self.fc2(torch.relu(self.fc1(self.ln(self.pool(h).mean((2, 3))))))

    net = Net()
    state = {"conv1.weight": w["conv1"], "conv1.bias": w["conv1_b"], "conv2.weight": w["conv2"], "conv2.bias": w["conv2_b"],
             "ln.weight": w["ln_gamma"], "ln.bias": w["ln_beta"], "fc1.weight": w["fc1"], "fc1.bias": w["fc1_b"],
             "fc2.weight": w["fc2"], "fc2.bias": w["fc2_b"]}
    for bn in ("bn1", "bn2"):
        state.update({f"{bn}.weight": w[bn + "_gamma"], f"{bn}.bias": w[bn + "_beta"], f"{bn}.running_mean": w[bn + "_mean"],
                      f"{bn}.running_var": w[bn + "_var"], f"{bn}.num_batches_tracked": np.array(0)})
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return net.eval()


def keras_model(w):
    """The network as a Keras 3 functional model (NHWC input)."""
    import exporters.keras  # noqa: F401  (loads triton before TensorFlow: see there)
    import keras

    layers = keras.layers
    conv1, conv2 = layers.Conv2D(CHANNELS, 3, padding="same"), layers.Conv2D(CHANNELS, 3, padding="same")
    bn1, bn2 = layers.BatchNormalization(epsilon=NORM_EPS), layers.BatchNormalization(epsilon=NORM_EPS)
    ln = layers.LayerNormalization(epsilon=NORM_EPS)
    fc1, fc2 = layers.Dense(HIDDEN, activation="relu"), layers.Dense(CLASSES)
    x = keras.Input((SIZE, SIZE, C_IN))
    h = layers.ReLU()(bn1(conv1(x)))
    h = layers.ReLU()(layers.Add()([h, bn2(conv2(h))]))
    y = fc2(fc1(ln(layers.GlobalAveragePooling2D()(layers.MaxPooling2D(2)(h)))))
    model = keras.Model(x, y)
    for conv, name in ((conv1, "conv1"), (conv2, "conv2")):
        conv.set_weights([w[name].transpose(2, 3, 1, 0), w[name + "_b"]])
    for bn, name in ((bn1, "bn1_"), (bn2, "bn2_")):
        bn.set_weights([w[name + k] for k in ("gamma", "beta", "mean", "var")])
    ln.set_weights([w["ln_gamma"], w["ln_beta"]])
    fc1.set_weights([w["fc1"].T, w["fc1_b"]])
    fc2.set_weights([w["fc2"].T, w["fc2_b"]])
    return model


def flax_module(w):
    """The network as a flax.nnx module (NHWC input, inference mode)."""
    import jax.numpy as jnp
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(C_IN, CHANNELS, (3, 3), padding="SAME", rngs=rngs)
            self.conv2 = nnx.Conv(CHANNELS, CHANNELS, (3, 3), padding="SAME", rngs=rngs)
            self.bn1 = nnx.BatchNorm(CHANNELS, use_running_average=True, epsilon=NORM_EPS, rngs=rngs)
            self.bn2 = nnx.BatchNorm(CHANNELS, use_running_average=True, epsilon=NORM_EPS, rngs=rngs)
            self.ln = nnx.LayerNorm(CHANNELS, epsilon=NORM_EPS, rngs=rngs)
            self.fc1, self.fc2 = nnx.Linear(CHANNELS, HIDDEN, rngs=rngs), nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.bn1(self.conv1(x)))
            h = nnx.relu(h + self.bn2(self.conv2(h)))
            h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2)).mean(axis=(1, 2))
            return self.fc2(nnx.relu(self.fc1(self.ln(h))))

    net = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))   # shapes only: every value is set below
    values = {("conv1", "kernel"): w["conv1"].transpose(2, 3, 1, 0), ("conv1", "bias"): w["conv1_b"],
              ("conv2", "kernel"): w["conv2"].transpose(2, 3, 1, 0), ("conv2", "bias"): w["conv2_b"],
              ("ln", "scale"): w["ln_gamma"], ("ln", "bias"): w["ln_beta"], ("fc1", "kernel"): w["fc1"].T,
              ("fc1", "bias"): w["fc1_b"], ("fc2", "kernel"): w["fc2"].T, ("fc2", "bias"): w["fc2_b"]}
    for bn in ("bn1", "bn2"):
        values.update({(bn, "scale"): w[bn + "_gamma"], (bn, "bias"): w[bn + "_beta"], (bn, "mean"): w[bn + "_mean"],
                       (bn, "var"): w[bn + "_var"]})
    for (module, name), value in values.items():
        getattr(getattr(net, module), name).value = jnp.asarray(value)
    return net


def _torch_export(opset: int, mode: str):
    """TorchScript (``export_module``: BatchNorm folded by torch), TorchScript "unfolded"
    (do_constant_folding=False: BatchNormalization nodes left for lrp_onnx), or dynamo."""
    def export(w, x, path):
        import torch

        from exporters.pytorch import export_module

        module, example = torch_module(w), torch.from_numpy(x)
        if mode == "torchscript":
            return export_module(module, example, path, opset=opset)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if mode == "unfolded":
                torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset, do_constant_folding=False,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
            else:
                torch.onnx.export(module, (example,), path, dynamo=True, opset_version=opset, input_names=["input"],
                                  output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        return path
    return export


def _ort_basic(w, x, path):
    """onnxruntime's BASIC-optimized file (constant folding, its own Conv+BatchNorm fusion) of
    the unfolded TorchScript export."""
    import onnxruntime as ort

    source = _torch_export(17, "unfolded")(w, x, path + ".source.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = path
    options.log_severity_level = 3
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return path


def _keras(w, x, path):
    from exporters.keras import export_keras

    return export_keras(keras_model(w), x.transpose(0, 2, 3, 1), path)


def _flax(normalization: str, opset: int):
    def export(w, x, path):
        from exporters.jax import export_flax

        return export_flax(flax_module(w), x.transpose(0, 2, 3, 1), path, opset=opset, normalization=normalization)
    return export


class Spelling(NamedTuple):
    framework: str          # the module the export needs ("torch", "onnxscript", "tensorflow", "jax2onnx")
    layout: str             # the model input's layout: "NCHW" or "NHWC"
    export: Callable        # (weights, NCHW example, path) -> path
    note: str


SPELLINGS: Dict[str, Spelling] = {
    "torchscript_opset17": Spelling("torch", "NCHW", _torch_export(17, "torchscript"), "torch.onnx TorchScript, opset 17"),
    "torchscript_opset11": Spelling("torch", "NCHW", _torch_export(11, "torchscript"),
                                    "TorchScript, opset 11: LayerNorm as primitives"),
    "torchscript_unfolded": Spelling("torch", "NCHW", _torch_export(17, "unfolded"),
                                     "TorchScript without constant folding: BatchNormalization nodes"),
    "ort_basic": Spelling("torch", "NCHW", _ort_basic, "onnxruntime's BASIC optimization of the unfolded file"),
    "dynamo_opset18": Spelling("onnxscript", "NCHW", _torch_export(18, "dynamo"), "torch.onnx dynamo, opset 18"),
    "dynamo_opset21": Spelling("onnxscript", "NCHW", _torch_export(21, "dynamo"), "torch.onnx dynamo, opset 21"),
    "keras_tf2onnx": Spelling("tensorflow", "NHWC", _keras,
                              "Keras 3 -> tf2onnx, opset 17: NHWC, BatchNorm as Mul/Add, LayerNorm as 13 ops"),
    "flax_native": Spelling("jax2onnx", "NHWC", _flax("prefer_native", 23),
                            "flax.nnx -> jax2onnx, opset 23: NHWC, native LayerNorm"),
    "flax_decomposed": Spelling("jax2onnx", "NHWC", _flax("auto", 17),
                                "flax.nnx -> jax2onnx, opset 17: LayerNorm as E[x^2] - E[x]^2"),
}


def available(spelling: Spelling) -> bool:
    import importlib.util

    needed = {"onnxscript": ("torch", "onnxscript"), "tensorflow": ("tensorflow", "tf2onnx", "keras"),
              "jax2onnx": ("jax", "flax", "jax2onnx")}.get(spelling.framework, (spelling.framework,))
    return all(importlib.util.find_spec(name) is not None for name in needed)


def relevance(path: str, layout: str, composite: str, x: np.ndarray, target: np.ndarray):
    """(relevance in NCHW, logits) of the model at ``path`` for NCHW inputs ``x``."""
    nhwc = layout == "NHWC"
    result = lrp_onnx.Explainer(path, composite).explain(x.transpose(0, 2, 3, 1) if nhwc else x, target=target)
    return (result.relevance.transpose(0, 3, 1, 2) if nhwc else result.relevance), result.output


def reference(path: str, x: np.ndarray, composites=COMPOSITES):
    """({composite: (relevance, logits)}, target) of the reference file, each composite
    explaining the predicted class of the first one."""
    target = relevance(path, "NCHW", composites[0], x, None)[1].argmax(axis=1)
    return {c: relevance(path, "NCHW", c, x, target) for c in composites}, target


def differences(path: str, layout: str, x: np.ndarray, ref) -> Dict[str, float]:
    """{composite, and "logits": max|R - R_ref| / max|R_ref|} of one spelling against
    ``ref`` = reference(...)."""
    explained, target = ref
    row = {}
    for composite, (want, want_logits) in explained.items():
        got, logits = relevance(path, layout, composite, x, target)
        row[composite] = float(np.abs(got - want).max() / np.abs(want).max())
        row["logits"] = float(np.abs(logits - want_logits).max() / np.abs(want_logits).max())
    return row


def export_spellings(names, folder: str, w=None, x=None) -> Dict[str, str]:
    """{name: path} of the spellings ``names`` exported into ``folder``."""
    w = weights() if w is None else w
    x = inputs() if x is None else x
    return {name: SPELLINGS[name].export(w, x, os.path.join(folder, name + ".onnx")) for name in names}


def keras_resnet50(size: int = 96, composites=("epsilon_plus", "epsilon_gamma_box")) -> None:
    """Keras' ResNet50 (random weights, BatchNorm statistics and Conv biases drawn so that
    tf2onnx keeps every BatchNorm as Mul -> Add) explained with and without ``fold_affine``:
    prints the Mul count, sum R_in / R_out per image and the heatmaps' correlation."""
    import exporters.keras as keras_exporter
    import keras
    import lrp_onnx.canonicalize as canonicalize

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(size=c) * 0.1, rng.normal(size=c) * 0.1,
                               rng.uniform(0.5, 1.5, c)])
        elif isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(size=bias.shape) * 0.01])
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    passes = canonicalize.PASSES
    with tempfile.TemporaryDirectory() as folder:
        path = keras_exporter.export_keras(model, x, os.path.join(folder, "resnet50.onnx"))
        for composite in composites:
            heat = []
            for label, kept in (("with fold_affine", passes), ("without", tuple(p for p in passes if p is not fold_affine))):
                canonicalize.PASSES = kept
                explainer = lrp_onnx.Explainer(path, composite)
                result = explainer.explain(x, target=np.array([1, 2]))
                muls = sum(n.op_type == "Mul" for n in explainer.forward_model.graph.node)
                print(f"keras resnet50 {composite} {label}: {muls} Mul nodes left, sum R_in / R_out "
                      + " / ".join(f"{c:.3f}" for c in result.conservation))
                heat.append(result.relevance.sum(-1).reshape(len(x), -1))
            canonicalize.PASSES = passes
            print(f"keras resnet50 {composite}: heatmap correlation with / without "
                  + " / ".join(f"{np.corrcoef(a, b)[0, 1]:.2f}" for a, b in zip(*heat)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spellings", default=",".join(SPELLINGS), help="comma-separated names (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print the README's table")
    parser.add_argument("--without", default="", help="comma-separated canonicalization passes to switch off "
                                                      "(e.g. fold_affine: what the spellings give without it)")
    parser.add_argument("--keras-resnet50", action="store_true", help="also Keras' ResNet50 with and without fold_affine")
    args = parser.parse_args(argv)
    import lrp_onnx.canonicalize as canonicalize

    off = {n for n in args.without.split(",") if n}
    unknown = off - {p.__name__ for p in canonicalize.PASSES}
    if unknown:
        parser.error(f"unknown passes: {', '.join(sorted(unknown))}")
    canonicalize.PASSES = tuple(p for p in canonicalize.PASSES if p.__name__ not in off)
    names = [n for n in args.spellings.split(",") if n]
    missing = [n for n in names if not available(SPELLINGS[n])]
    for name in missing:
        print(f"skipped {name}: {SPELLINGS[name].framework} is not installed", file=sys.stderr)
    names = [REFERENCE] + [n for n in names if n not in missing and n != REFERENCE]
    x = inputs()
    with tempfile.TemporaryDirectory() as folder:
        paths = export_spellings(names, folder, x=x)
        ref = reference(paths[REFERENCE], x)
        table = {name: differences(path, SPELLINGS[name].layout, x, ref) for name, path in paths.items()}
    columns = ("logits",) + COMPOSITES
    if args.markdown:
        print("| spelling | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
    for name in names:
        cells = [f"{table[name][c]:.1e}" for c in columns]
        label = f"{name} ({SPELLINGS[name].note})"
        print(f"| {label} | " + " | ".join(cells) + " |" if args.markdown else f"{label:<90} " + " ".join(cells))
    if args.keras_resnet50:
        keras_resnet50()
    worst = max(v for name in names for c, v in table[name].items() if c != "logits")
    print(f"largest max|R - R_ref| / max|R_ref|: {worst:.1e} (tolerance {TOLERANCE:.0e})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
