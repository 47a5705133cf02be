"""exporters.scikit_learn: MLPClassifier -> ONNX logits; predictions equal ``predict`` on the
digits test split, and LRP-0 without biases conserves relevance."""
import warnings

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("sklearn", reason="the scikit-learn exporter needs scikit-learn")
pytest.importorskip("skl2onnx", reason="the scikit-learn exporter needs skl2onnx (pip install '.[sklearn]')")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

import lrp_onnx  # noqa: E402
from exporters import ExportError  # noqa: E402
from exporters.digits import split  # noqa: E402
from exporters.scikit_learn import export_mlp, mlp_to_onnx, predicted_classes  # noqa: E402
from lrp_onnx.composites import Composite, Family  # noqa: E402
from lrp_onnx.rules import LRP0  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits in [-1, 1] (N, 64), labels, and the seeded train/test split."""
    data = load_digits()
    x = (data.data / 8 - 1).astype(np.float32)
    return x, data.target, *split(len(x))


def _fit(x, y, activation):
    with warnings.catch_warnings():   # 100 iterations do not converge fully; that is fine here
        warnings.simplefilter("ignore")
        return MLPClassifier((32, 16), activation=activation, max_iter=100, random_state=0).fit(x, y)


@pytest.mark.parametrize("activation, binary", [("relu", False), ("tanh", False), ("logistic", False), ("relu", True)],
                         ids=["relu", "tanh", "logistic", "binary"])
def test_predictions_and_conservation(digits, tmp_path, activation, binary):
    """Binary: odd against even digits (one logistic output unit, logits (N, 1)).
    Conservation: |sum R_in - R_out| <= 1e-5 * sum |R_in| per sample (float32 sums; the
    total can be near 0 for a binary log-odds, so the scale is the relevance's own; depth 3,
    fan-in <= 64: a random walk of 3 * sqrt(64) roundings of 2^-24 is 1.4e-6, 1e-5 is 7 times
    that). The explainer's forward is the exported graph's, in float32 too: 1e-6 (a few ulps of
    the logits, O(1)) covers a reordered sum of <= 64 terms."""
    x, y, train, test = digits
    labels = y % 2 if binary else y
    model = _fit(x[train], labels[train], activation)
    path = tmp_path / "mlp.onnx"
    onnx_model = export_mlp(model, path)
    assert [o.name for o in onnx_model.graph.output] == ["logits"]
    assert {n.op_type for n in onnx_model.graph.node} <= {"MatMul", "Add", "Relu", "Tanh", "Sigmoid"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x[test]})[0]
    assert logits.shape == (len(test), 1 if binary else 10)
    np.testing.assert_array_equal(predicted_classes(logits, model.classes_), model.predict(x[test]))

    explainer = lrp_onnx.Explainer(str(path), composite=Composite(((Family("all"), LRP0(zero_bias=True)),)))
    res = explainer.explain(x[test])
    np.testing.assert_allclose(res.output, logits, rtol=1e-6, atol=1e-6)
    assert np.all(np.abs(res.total) > 0)
    error = np.abs(res.relevance.sum(1, dtype=np.float64) - res.total)
    assert np.all(error <= 1e-5 * np.abs(res.relevance).sum(1)), (error / np.abs(res.relevance).sum(1)).max()


def test_the_export_check_rejects_an_omitted_bias(digits):
    """The exporter's check (float64 predict_proba, envelope of numpy's float32 run) rejects
    the cut graph with the output layer's bias omitted, a small but real error."""
    from onnx import numpy_helper

    from exporters.scikit_learn import _verify

    x, y, train, _ = digits
    model = _fit(x[train], y[train], "relu")
    onnx_model = mlp_to_onnx(model)
    _verify(onnx_model, model, 64)   # the right graph passes
    last_add = [n for n in onnx_model.graph.node if n.op_type == "Add"][-1]
    for init in onnx_model.graph.initializer:
        if init.name in last_add.input:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    with pytest.raises(ExportError, match="do not reproduce predict_proba"):
        _verify(onnx_model, model, 64)


def test_binary_target_mask_explains_the_other_class(digits):
    """A mask of -1 puts -log-odds (the evidence for classes_[0]) on the output."""
    x, y, train, test = digits
    model = _fit(x[train], y[train] % 2, "relu")
    explainer = lrp_onnx.Explainer(mlp_to_onnx(model), composite=Composite(((Family("all"), LRP0()),)))
    one = explainer.explain(x[test[:5]])
    other = explainer.explain(x[test[:5]], target=-np.ones((5, 1), np.float32))
    # the same computation with the initial relevance negated: equal up to a few float32 ulps
    np.testing.assert_allclose(other.relevance, -one.relevance, rtol=1e-5, atol=1e-7)


def test_errors(digits):
    x, y, train, _ = digits
    with pytest.raises(ExportError, match="not fitted"):
        mlp_to_onnx(MLPClassifier())
    with pytest.raises(ExportError, match="expected a fitted sklearn.neural_network.MLPClassifier, got list"):
        mlp_to_onnx([1, 2])
    multilabel = np.stack([y[train] % 2, y[train] > 4], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MLPClassifier((8,), max_iter=5, random_state=0).fit(x[train], multilabel)
    with pytest.raises(ExportError, match="multi-label"):
        mlp_to_onnx(model)
