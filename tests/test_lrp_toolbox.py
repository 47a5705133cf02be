"""exporters.lrp_toolbox: the LRP Toolbox's LeNet-5 as ONNX, its accuracy on MNIST, and its
relevance against an independent numpy (float64) implementation of the toolbox's layer rules."""
import os
import warnings

import numpy as np
import onnxruntime as ort
import pytest

import lrp_onnx
from exporters import ExportError
from exporters.lrp_toolbox import main, parse, read, to_onnx, toolbox_composite
from lrp_onnx.rules import AlphaBeta, Epsilon

from conftest import SHARED_DATA

LENET = os.path.join(SHARED_DATA, "lrp_toolbox", "LeNet-5.txt")
MNIST = os.path.join(SHARED_DATA, "mnist")
needs_shared = pytest.mark.skipif(
    not (os.path.isfile(LENET) and os.path.isdir(MNIST)),
    reason="needs ../shared/data (LeNet-5.txt and MNIST), which a fresh clone does not have")


# ---- the toolbox's layers and LRP rules, float64, NHWC, one window at a time --------------

def _windows(x, h, w, s0, s1):
    """Yield (i, j, slice of rows, slice of columns) of the valid windows of x (N, H, W, C)."""
    for i in range((x.shape[1] - h) // s0 + 1):
        for j in range((x.shape[2] - w) // s1 + 1):
            yield i, j, slice(i * s0, i * s0 + h), slice(j * s1, j * s1 + w)


def _share(z, zsum, r, rule, axes):
    """Each contribution's share of r: epsilon (Eq. 58 of Bach et al. 2015) z/(zsum + eps*sign)
    * r, or alpha-beta (Eq. 60) alpha*z+/zsum+ - beta*z-/zsum- with sums over ``axes`` and
    the bias split by sign (zsum carries the bias; for alpha-beta zsum is the bias alone)."""
    kind, param = rule
    if kind == "epsilon":
        return z * (r / (zsum + param * np.where(zsum >= 0, 1.0, -1.0)))
    alpha, beta = param, param - 1
    zp, zn = np.maximum(z, 0), np.minimum(z, 0)
    sp = zp.sum(axes, keepdims=True) + np.maximum(zsum, 0) + 1e-16
    sn = zn.sum(axes, keepdims=True) + np.minimum(zsum, 0) - 1e-16
    return alpha * zp * (r / sp) - beta * zn * (r / sn)


def toolbox_forward(layers, x):
    """Forward pass; returns the input of every layer and the output."""
    acts = [x]
    for l in layers:
        a = acts[-1]
        if l.kind == "Linear":
            out = a @ l.weights + l.bias
        elif l.kind == "Convolution":
            h, w, _, n, s0, s1 = l.params
            out = np.zeros(((a.shape[1] - h) // s0 + 1, (a.shape[2] - w) // s1 + 1, n))[None].repeat(len(a), 0)
            for i, j, rows, cols in _windows(a, h, w, s0, s1):
                out[:, i, j] = np.einsum("nhwd,hwdk->nk", a[:, rows, cols], l.weights) + l.bias
        elif l.kind in ("SumPool", "MaxPool"):
            h, w, s0, s1 = l.params
            out = np.zeros((len(a), (a.shape[1] - h) // s0 + 1, (a.shape[2] - w) // s1 + 1, a.shape[3]))
            for i, j, rows, cols in _windows(a, h, w, s0, s1):
                patch = a[:, rows, cols]
                out[:, i, j] = patch.sum((1, 2)) / np.sqrt(h * w) if l.kind == "SumPool" else patch.max((1, 2))
        elif l.kind == "Rect":
            out = np.maximum(a, 0)
        elif l.kind == "Tanh":
            out = np.tanh(a)
        elif l.kind == "SoftMax":
            out = a   # explained before the softmax, as the toolbox's demos do
        else:   # Flatten
            out = a.reshape(len(a), -1)
        acts.append(out)
    return acts


def toolbox_lrp(layers, x, rule):
    """The toolbox's Sequential.lrp(R, rule, param) with R = output * one-hot(argmax): every
    layer's _epsilon_lrp / _alphabeta_lrp. SumPool's rule sees the window's unscaled sum
    (the toolbox divides Y by its 1/sqrt(h*w) normalizer first); MaxPool gives each output's
    relevance to the window's maxima (split evenly among ties); activations pass it on."""
    acts = toolbox_forward(layers, x)
    out = acts[-1]
    r = out * (out == out.max(1, keepdims=True))
    for l, a in zip(reversed(layers), reversed(acts[:-1])):
        if l.kind == "Linear":
            z = a[:, :, None] * l.weights[None]
            r = _share(z, z.sum(1, keepdims=True) + l.bias if rule[0] == "epsilon" else l.bias, r[:, None], rule, (1,)).sum(2)
        elif l.kind in ("Convolution", "SumPool", "MaxPool"):
            h, w, s0, s1 = l.window
            r_in = np.zeros_like(a)
            for i, j, rows, cols in _windows(a, h, w, s0, s1):
                patch, r_ij = a[:, rows, cols], r[:, i, j]
                if l.kind == "Convolution":
                    z = patch[..., None] * l.weights[None]
                    zsum = z.sum((1, 2, 3), keepdims=True) + l.bias if rule[0] == "epsilon" else l.bias
                    r_in[:, rows, cols] += _share(z, zsum, r_ij[:, None, None, None], rule, (1, 2, 3)).sum(4)
                elif l.kind == "SumPool":
                    zsum = patch.sum((1, 2), keepdims=True) if rule[0] == "epsilon" else 0.0
                    r_in[:, rows, cols] += _share(patch, zsum, r_ij[:, None, None], rule, (1, 2))
                else:
                    winners = patch == patch.max((1, 2), keepdims=True)
                    r_in[:, rows, cols] += winners / winners.sum((1, 2), keepdims=True) * r_ij[:, None, None]
            r = r_in
        elif l.kind == "Flatten":
            r = r.reshape(a.shape)
    return r


# ---- LeNet-5 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """(toolbox layers, ONNX model path, MNIST inputs (2000, 32, 32, 1) in [-1, 1], labels)."""
    if not (os.path.isfile(LENET) and os.path.isdir(MNIST)):
        pytest.skip("needs ../shared/data (LeNet-5.txt and MNIST), which a fresh clone does not have")
    scipy_io = pytest.importorskip("scipy.io", reason="reading MNIST's .mat file needs scipy")
    path = str(tmp_path_factory.mktemp("toolbox") / "lenet5.onnx")
    assert main([LENET, "-o", path]) == 0
    pixels = scipy_io.loadmat(os.path.join(MNIST, "test_images.mat"))["data"][:2000]
    x = np.pad((pixels / 127.5 - 1).reshape(-1, 28, 28, 1), ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1)
    with warnings.catch_warnings():   # the labels were saved by Python 2
        warnings.simplefilter("ignore", UserWarning)
        labels = np.load(os.path.join(MNIST, "test_labels.npy")).ravel()[:2000].astype(int)
    return read(LENET), path, x.astype(np.float32), labels


@needs_shared
def test_lenet5_accuracy(lenet):
    """The toolbox measured 98.75% on the first 2000 test digits; we require >= 98.5%."""
    layers, path, x, labels = lenet
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [32, 32, 1]
    accuracy = (session.run(None, {"input": x})[0].argmax(1) == labels).mean()
    assert accuracy >= 0.985, accuracy


@needs_shared
@pytest.mark.parametrize("rule", [("epsilon", 1.0), ("alphabeta", 2.0)], ids=["epsilon1", "alpha2beta1"])
def test_lenet5_relevance_equals_toolbox_rules(lenet, rule):
    """10 digits; float32 onnxruntime against the float64 numpy oracle: |R - R_ref| <= 1e-4 *
    max|R_ref| (the denominators are at least eps = 1 away from 0 for epsilon, and sums of
    same-signed terms for alpha-beta, so float32 rounding stays near 1e-6 relative: a shallow
    net, depth 6, fan-in <= 800, a random walk of 6 * sqrt(800) roundings of 2^-24 is 1e-5 of
    sum|terms|; an a-priori bound, tests/tolerances.py). The wrong variant (epsilon on the
    unscaled SumPool sum) fails it by 100x: test_sumpool_epsilon_needs_the_rescaled_epsilon."""
    layers, path, x, _ = lenet
    composite = toolbox_composite(layers, rule[0], **({"epsilon": rule[1]} if rule[0] == "epsilon" else {"alpha": rule[1]}))
    explainer = lrp_onnx.Explainer(path, composite=composite)
    if rule[0] == "epsilon":   # eps on the toolbox's unscaled SumPool sum: eps / sqrt(2*2) on the Conv
        expected_rules = {l.name: Epsilon(0.5 if l.kind == "SumPool" else 1.0) for l in layers if l.kind in ("Convolution", "SumPool")}
    else:
        expected_rules = {l.name: AlphaBeta(2.0, 1.0, epsilon=1e-16) for l in layers if l.kind in ("Convolution", "SumPool")}
    assert explainer.rules == expected_rules
    got = explainer.explain(x[:10]).relevance
    expected = toolbox_lrp(layers, x[:10].astype(np.float64), rule)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-4 * scale, np.abs(got - expected).max() / scale


@needs_shared
def test_sumpool_epsilon_needs_the_rescaled_epsilon(lenet):
    """Plain Epsilon(1) on the SumPool Convs puts eps on the scaled sum and differs from the
    toolbox: the per-SumPool epsilon of toolbox_composite is what makes the two agree."""
    layers, path, x, _ = lenet
    got = lrp_onnx.Explainer(path, composite={"maxpool": "winner", "rules": [{"where": "all", "rule": {"rule": "Epsilon", "epsilon": 1.0}}]}).explain(x[:4]).relevance
    expected = toolbox_lrp(layers, x[:4].astype(np.float64), ("epsilon", 1.0))
    assert np.abs(got - expected).max() > 1e-2 * np.abs(expected).max()   # 100x the 1e-4 tolerance above


# ---- a synthetic model with the other layer types ------------------------------------------

def _format(layers_spec, rng):
    """Toolbox text for (kind, params) layers, with random weights."""
    lines = []
    for kind, params in layers_spec:
        lines.append(" ".join([kind, *map(str, params)]))
        if kind in ("Linear", "Convolution"):
            shape = params if kind == "Linear" else params[:4]
            lines.append(" ".join(f"{v:.6f}" for v in rng.normal(0, 0.5, int(np.prod(shape)))))
            lines.append(" ".join(f"{v:.6f}" for v in rng.normal(0, 0.1, shape[-1])))
    return "\n".join(lines) + "\n"


SMALL = [("Convolution", (3, 3, 2, 4, 1, 1)), ("Tanh", ()), ("MaxPool", (2, 2, 2, 2)), ("Convolution", (2, 2, 4, 3, 1, 2)),
         ("Rect", ()), ("SumPool", (2, 1, 1, 1)), ("Flatten", ()), ("Linear", (18, 5)), ("SoftMax", ())]


@pytest.mark.parametrize("rule", [("epsilon", 0.1), ("alphabeta", 2.0), ("alphabeta", 1.0)])
def test_small_model_with_every_layer_kind(tmp_path, rule):
    """Convolution with strides, Tanh, MaxPool, SumPool with a 2x1 window, Flatten's (H, W, C)
    order, Linear and a final SoftMax; random weights and inputs, 3 samples (no ties in the
    MaxPool windows). Input shape inferred: (12, 12, 2), the smallest that fits Linear 18. Same tolerance as LeNet-5;
    the forward: depth 4, fan-in <= 18, 1e-5 relative (4 * sqrt(18) * 2^-24 = 1e-6), atol for logits near 0."""
    layers = parse(_format(SMALL, np.random.default_rng(1)))
    model = to_onnx(layers)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [12, 12, 2]
    x = np.random.default_rng(2).uniform(-1, 1, (3, 12, 12, 2))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = toolbox_forward(layers, x)[-1]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(session.run(None, {"input": x.astype(np.float32)})[0], probabilities, rtol=1e-5, atol=1e-6)
    composite = toolbox_composite(layers, rule[0], **({"epsilon": rule[1]} if rule[0] == "epsilon" else {"alpha": rule[1]}))
    explainer = lrp_onnx.Explainer(model, composite=composite)
    assert "maxpool2" not in explainer.rules   # winner-take-all, as the toolbox's MaxPool LRP
    res = explainer.explain(x.astype(np.float32))
    np.testing.assert_allclose(res.output, logits, rtol=1e-5, atol=1e-5)
    expected = toolbox_lrp(layers, x, rule)
    assert np.abs(res.relevance - expected).max() <= 1e-4 * np.abs(expected).max()


# ---- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", "no layers"),
    ("Linear 2 3\n1 2 3 4 5 6\n", "line 3: expected a line of 3 Linear biases, found the end of the file"),
    ("Linear 2 3\n1 2 3 4 5\n0 0 0\n", "line 2: expected 6 numbers (Linear weights, 2*3), found 5"),
    ("Linear 2 3\n1 2 3 4 5 x\n0 0 0\n", "line 2: expected 6 numbers (Linear weights, 2*3), found a non-number"),
    ("Linear 2 3\n1 2 3 4 5 nan\n0 0 0\n", "line 2: Linear weights, 2*3 contain NaN"),
    ("Linear 2\n", "line 1: Linear takes 2 positive integers, got 1"),
    ("Linear 2 a\n", "line 1: Linear takes 2 integers"),
    ("Dense 2 3\n", "line 1: unknown layer 'Dense'; expected one of Linear"),
    ("Linear 2 3\n1 2 3 4 5 6\n0 0 0\n\nLinear 4 1\n1 1 1 1\n0\n", "line 5: Linear expects 4 inputs, gets 3"),
    ("Linear 2 3\n1 2 3 4 5 6\n0 0 0\nSoftMax\nRect\n", "line 4: SoftMax is supported only as the last layer"),
])
def test_malformed_files(text, message):
    with pytest.raises(ExportError) as info:
        to_onnx(parse(text))
    assert message in str(info.value)


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("Convolution 5 5 1 10 1 1\n0.1 0.2\n")
    out = tmp_path / "out.onnx"
    assert main([str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}: line 2: expected 250 numbers" in err
    assert not out.exists()
    assert main([str(tmp_path / "missing.txt"), "-o", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_spatial_output_stays_nhwc():
    """A model without Flatten returns the toolbox's NHWC tensor; an explicit input shape."""
    layers = parse(_format([("Convolution", (3, 3, 1, 2, 1, 1)), ("Rect", ())], np.random.default_rng(3)))
    model = to_onnx(layers, (6, 5, 1))
    x = np.random.default_rng(4).uniform(-1, 1, (2, 6, 5, 1))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.astype(np.float32)})[0]
    assert got.shape == (2, 4, 3, 2)
    np.testing.assert_allclose(got, toolbox_forward(layers, x)[-1], rtol=1e-5, atol=1e-6)
