"""The Ray Data engine (lrp_onnx.audit.engines.on_ray): an actor pool with one onnxruntime
session of the saved explainer per actor gives the local engine's store, bit for bit, with
one or two workers. One local Ray cluster for the module, shut down at its end."""
import numpy as np
import pytest

from lrp_onnx import audit
from test_audit_common import COMPOSITE, DIGITS_CNN, digits, need_audit_extra


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (pip install 'lrp_onnx[audit]')")
    pytest.importorskip("ray.data", reason="the Ray engine needs ray[data]")
    from lrp_onnx.audit.engines import ray_cluster as connect

    assert connect() is True                  # started here: 2 CPUs on this machine, no dashboard
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    need_audit_extra()
    folder = tmp_path_factory.mktemp("ray")
    x, y = digits(200)
    x[17] = np.nan                            # an error row travels through Ray too
    np.savez(folder / "d.npz", x=x, y=y)
    return folder / "d.npz"


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_equals_local(ray_cluster, data, tmp_path, workers):
    options = dict(batch_size=25, report=False, virelay=False, progress=False)
    here = audit.run(DIGITS_CNN, data, tmp_path / "local", COMPOSITE, **options)
    there = audit.run(DIGITS_CNN, data, tmp_path / "ray", COMPOSITE, engine="ray", workers=workers, **options)
    assert ray_cluster.is_initialized()       # an existing cluster is used, and left running
    np.testing.assert_array_equal(np.asarray(there.store.relevance[:]), np.asarray(here.store.relevance[:]))
    np.testing.assert_array_equal(np.asarray(there.store.output[:]), np.asarray(here.store.output[:]))
    assert there.table.equals(here.table)
    assert there.table.column("error").to_pylist()[17] == "contains NaN or Inf values"
