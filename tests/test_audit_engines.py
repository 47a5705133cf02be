"""lrp_onnx.audit.engines: the local engine runs the saved explainer bytes and gives what
Explainer.explain gives; unreadable samples are NaN rows with their error; the label target."""
import numpy as np
import pytest

from lrp_onnx import Explainer
from lrp_onnx.audit import explainer_bytes
from lrp_onnx.audit.engines import BatchExplainer, explainer_signature, local
from lrp_onnx.audit.readers import open_source
from lrp_onnx.errors import InputError
from test_audit_common import COMPOSITE, DIGITS_CNN, digits


@pytest.fixture(scope="module")
def saved():
    return explainer_bytes(DIGITS_CNN, COMPOSITE)


def test_batches_equal_explainer_explain(saved, tmp_path):
    x, y = digits(20)
    x[7] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=y)
    worker = BatchExplainer(saved, open_source(tmp_path / "d.npz", (None, 1, 28, 28)), batch_size=8)
    results = dict(local(worker, [0, 1, 2]))
    assert [len(r["index"]) for r in results.values()] == [8, 8, 4]
    got = {k: np.concatenate([results[b][k] for b in range(3)]) for k in results[0]}
    ok = np.arange(20) != 7
    expected = Explainer(DIGITS_CNN, COMPOSITE).explain(x[ok], batch_size=8)
    np.testing.assert_array_equal(got["relevance"][ok], expected.relevance)   # same batches, same session
    np.testing.assert_array_equal(got["prediction"][ok], expected.target)
    np.testing.assert_allclose(got["conservation"][ok], expected.conservation, rtol=1e-12)
    assert np.isnan(got["relevance"][7]).all() and got["prediction"][7] == -1
    assert got["error"][7] == "contains NaN or Inf values" and list(got["error"][ok]) == [""] * 19


def test_label_target_explains_the_label(saved, tmp_path):
    x, y = digits(6)
    np.savez(tmp_path / "d.npz", x=x, y=(y + 1) % 10)   # wrong labels on purpose
    worker = BatchExplainer(saved, open_source(tmp_path / "d.npz", (None, 1, 28, 28)), 6, target="label")
    result = worker(0)
    assert result["target"].tolist() == ((y + 1) % 10).tolist()
    expected = Explainer(DIGITS_CNN, COMPOSITE).explain(x, target=(y + 1) % 10)
    np.testing.assert_allclose(result["relevance"], expected.relevance, rtol=1e-5, atol=1e-7)


def test_a_plain_model_is_not_an_explainer():
    with open(DIGITS_CNN, "rb") as fh:
        with pytest.raises(InputError, match="not an lrp_onnx explainer"):
            explainer_signature(fh.read())


def test_explainer_bytes_of_an_explainer_are_its_own(saved, tmp_path):
    path = tmp_path / "explainer.onnx"
    path.write_bytes(saved)
    assert explainer_bytes(str(path), "epsilon_plus") == saved   # used as it is, not compiled again
    assert explainer_signature(saved)[1][1:] == (1, 28, 28)
