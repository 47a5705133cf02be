"""models/: the shipped digits models (size, input format, held-out accuracy) and their
training code (small versions retrained here: deterministic and learning)."""
import os

import numpy as np
import onnx
import pytest

pytest.importorskip("sklearn", reason="the digits data come from scikit-learn")

from conftest import ROOT  # noqa: E402
from exporters.digits import digits_28x28, onnx_accuracy, split  # noqa: E402
from models.train import build_mlp, write_cnn  # noqa: E402
from tolerances import shallow_bound  # noqa: E402

MODELS = os.path.join(ROOT, "models")


@pytest.fixture(scope="module")
def digits():
    x, y = digits_28x28()
    return x, y, *split(len(x))


def test_digits_data(digits):
    x, y, train, test = digits
    assert x.shape == (1797, 784) and x.dtype == np.float32 and x.min() == -1 and x.max() == 1
    assert len(train) == 1500 and len(test) == 297 and not set(train) & set(test)
    np.testing.assert_array_equal(x.reshape(-1, 28, 28)[:, :2], -1)   # the 2-pixel border


@pytest.mark.parametrize("name, input_name, shape, accuracy, depth, fan_in", [
    ("digits_mlp.onnx", "x", ["N", 784], 0.9865, 3, 784),
    ("digits_cnn.onnx", "input", ["N", 1, 28, 28], 0.9865, 3, 784),
])
def test_shipped_model(digits, name, input_name, shape, accuracy, depth, fan_in):
    """As models/README.md states: under 5 MB, the input format, logits (N, 10), and the held-out
    accuracy printed by `python -m models.train` (293/297; >= 95% required by the issue).
    The accuracy is an argmax, ill-conditioned at near-ties: a test sample whose two largest
    logits are within the float32 bound of these shallow nets (tests/tolerances.py
    shallow_bound) may be classified either way on another CPU, so each such sample widens the
    allowance by one sample (there are none on the machines measured: the allowance stays
    half a sample, i.e. the count must be exactly 293)."""
    x, y, _, test = digits
    path = os.path.join(MODELS, name)
    assert os.path.getsize(path) < 5 * 2**20
    model = onnx.load(path)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == input_name and [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == shape
    assert out.name == "logits" and out.type.tensor_type.shape.dim[1].dim_value == 10
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {input_name: x[test].reshape([len(test) if d == "N" else d for d in shape])})[0]
    top = np.sort(logits, axis=1)[:, -2:]
    ties = int((top[:, 1] - top[:, 0] <= shallow_bound(depth, fan_in, np.abs(logits).max())).sum())
    assert abs(onnx_accuracy(path, x[test], y[test]) - accuracy) <= (ties + 0.5) / len(test), ties


def test_mlp_training_is_deterministic(digits):
    """A 784-64-10 version, 6 epochs: two runs give the same bytes; it learns (>= 93%)."""
    x, y, train, test = digits
    first, second = (build_mlp(x, y, train, sizes=(784, 64, 10), epochs=6) for _ in range(2))
    assert first.SerializeToString() == second.SerializeToString()
    assert onnx_accuracy(first, x[test], y[test]) >= 0.93


def test_cnn_training_is_deterministic(digits, tmp_path):
    """A (4, 8)-channel version, 3 epochs, through the same export: equal weights; >= 85%."""
    pytest.importorskip("torch", reason="the CNN is trained with torch")
    x, y, train, test = digits
    paths = [tmp_path / f"cnn{i}.onnx" for i in range(2)]
    for path in paths:
        write_cnn(path, x, y, train, channels=(4, 8), epochs=3)
    weights = [{t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(p).graph.initializer} for p in paths]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
    assert onnx_accuracy(paths[0], x[test], y[test]) >= 0.85
