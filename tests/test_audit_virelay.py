"""lrp_onnx.audit.virelay: the audit exported as a ViRelAy project that ViRelAy's own model
reads and its own server serves (started on 127.0.0.1 in a subprocess)."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from lrp_onnx import audit
from test_audit_common import COMPOSITE, DIGITS_CNN, digits, need_audit_extra


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    need_audit_extra()
    folder = tmp_path_factory.mktemp("virelay")
    x, y = digits(120)
    x[5] = np.nan                        # not explained: not exported
    np.savez(folder / "d.npz", x=x, y=y)
    result = audit.run(DIGITS_CNN, folder / "d.npz", folder / "out", COMPOSITE, batch_size=40, report=False,
                       progress=False)
    return result


def test_virelay_reads_the_project(exported):
    pytest.importorskip("virelay", reason="ViRelAy is not installed (pip install 'lrp_onnx[audit]')")
    from virelay.model import Project

    project = Project(exported.paths["virelay"])
    try:
        assert len(project.dataset) == 119
        table = exported.table
        ok = [i for i, e in enumerate(table.column("error").to_pylist()) if not e]
        sample, attribution = project.get_sample(7), project.get_attribution(7)
        assert sample.labels[0].index == table.column("label").to_pylist()[ok[7]]
        relevance = np.asarray(exported.store.relevance[ok[7]])[0]
        np.testing.assert_allclose(attribution.data[..., 0], relevance, rtol=1e-6)
        assert np.argmax(attribution.prediction) == table.column("prediction").to_pylist()[ok[7]]
        analysed = [c for c in exported.classes if c.spray is not None]
        categories = [c.name for c in project.get_analysis_categories("spectral_analysis")]
        assert sorted(categories) == sorted(str(c.target) for c in analysed)
        first = project.get_analysis("spectral_analysis", str(analysed[0].target), "eigengap", "spectral")
        np.testing.assert_array_equal(first.clustering, analysed[0].spray.clusters)
        np.testing.assert_allclose(first.eigenvalues, analysed[0].spray.eigenvalues)
    finally:
        project.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_virelay_server_lists_the_samples(exported):
    pytest.importorskip("virelay", reason="ViRelAy is not installed (pip install 'lrp_onnx[audit]')")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/projects"
    server = subprocess.Popen([sys.executable, "-m", "virelay", exported.paths["virelay"], "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={"PATH": "/usr/bin:/bin", "BROWSER": "true"})   # BROWSER: open no browser
    try:
        for _ in range(300):                      # up to 30 s for the server to start
            try:
                projects = get(base)
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.1)
        else:
            pytest.fail("ViRelAy did not answer within 30 s")
        assert [p["name"] for p in projects] == ["LRP audit of digits_cnn.onnx"]
        method = get(f"{base}/0")["analysisMethods"][0]
        counted = 0
        for category in method["categories"]:
            query = urllib.parse.urlencode({"category": category["name"], "clustering": "eigengap", "embedding": "spectral"})
            counted += len(get(f"{base}/0/analyses/{method['name']}?{query}")["embedding"])
        analysed = sum(len(c.rows) for c in exported.classes if c.spray is not None)
        assert counted == analysed
        assert get(f"{base}/0/dataset/118")["index"] == 118          # the last of the 119 explained samples
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(f"{base}/0/dataset/119")
        assert missing.value.code == 404
    finally:
        server.terminate()
        server.wait(timeout=30)
