"""lrp_onnx.audit.report: one self-contained HTML file (inline PNGs and SVGs, nothing
fetched) with the summary, every class's mean heatmap, spectrum and clusters, and the inputs
that could not be read; headless Chromium renders it."""
import base64
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from lrp_onnx import audit
from lrp_onnx.images import PRESETS
from test_audit_common import COMPOSITE, DIGITS_CNN, digits, image_folder, need_audit_extra

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("PIL", reason="reading PNG needs Pillow")
    need_audit_extra()
    folder = tmp_path_factory.mktemp("report")
    x, y = digits(150)
    image_folder(folder / "data", x, y)
    (folder / "data" / "3" / "broken.png").write_bytes(b"not a png")
    result = audit.run(DIGITS_CNN, folder / "data", folder / "out", COMPOSITE, preprocess=PRESETS["mnist"],
                       batch_size=32, virelay=False, progress=False)
    with open(result.paths["report"], encoding="utf-8") as fh:
        return result, fh.read()


def test_report_is_self_contained(report):
    result, text = report
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text) and "<script" not in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) > 50
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)


def test_report_shows_summary_classes_clusters_and_errors(report):
    result, text = report
    table = result.table
    assert "<td>151</td>" in text and "<td>150</td>" in text    # samples, explained
    assert "3/broken.png" in text and "is not a readable image" in text
    analysed = [c for c in result.classes if c.spray is not None]
    assert analysed and text.count("eigenvalues of the normalised Laplacian") == len(analysed)
    for c in result.classes:
        assert f"id='class-{c.target}'" in text
    clusters = sum(c.spray.k for c in analysed)
    assert text.count("cluster mean heatmap") == clusters
    accuracy = np.mean([a == b for a, b, e in zip(table.column("label").to_pylist(), table.column("prediction").to_pylist(),
                                                   table.column("error").to_pylist()) if not e])
    assert f"{accuracy:.2%}" in text


def test_chromium_renders_the_report(report, tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package)")
    result, _ = report
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,1400",
                    "--virtual-time-budget=10000",   # the screenshot waits until every inline image is drawn
                    "file://" + os.path.abspath(result.paths["report"])], capture_output=True, timeout=120)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    assert pixels.shape == (1400, 1000, 3)
    # coloured heatmaps on the page, not a blank or grey one (a blank page has none; the
    # tutorial's colour map is pale near 0, so "coloured" is a channel spread above 15 of 255;
    # how much of the page is coloured varies with the random heatmaps: 0.7% to over 1% seen)
    assert (pixels.std(axis=2) > 15).mean() > 0.002
