"""``lrp-onnx audit``: a run prints what it found and where it wrote it; bad input exits
with code 2 and one line that names the problem, and writes nothing."""
import os

import numpy as np
import pytest

from lrp_onnx.cli import main
from test_audit_common import DIGITS_CNN, composite_file, digits, need_audit_extra


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    need_audit_extra()
    folder = tmp_path_factory.mktemp("cli")
    x, y = digits(60)
    np.savez(folder / "d.npz", x=x, y=y)
    return folder / "d.npz"


def test_audit_prints_summary_and_writes_the_store(npz, tmp_path, capsys):
    code = main(["audit", DIGITS_CNN, str(npz), "--out", str(tmp_path / "out"), "--composite",
                 composite_file(tmp_path), "--batch-size", "16", "--no-progress"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "explained 60 of 60 samples (0 errors)"
    assert out[-1] == "wrote " + ", ".join(str(tmp_path / "out" / p) for p in
                                           ("audit.parquet", "relevance.zarr", "report.html", "virelay/project.yaml"))
    assert all(os.path.exists(tmp_path / "out" / p) for p in ("audit.parquet", "report.html", "virelay/project.yaml"))


@pytest.mark.parametrize("case, message", [
    ("missing", "DATA not found: "),
    ("empty", "no images in the folder"),
    ("unknown", "unknown DATA format"),
    ("shape", "'x' has shape (4, 784), the model takes samples of shape (1, 28, 28): reshape x to (N, 1, 28, 28)"),
    ("address", "--address and --workers are for --engine ray"),
    ("batch", "batch size must be a positive int, got 0"),
])
def test_bad_input_exits_2_with_one_line(npz, tmp_path, capsys, case, message):
    data, extra = str(npz), []
    if case == "missing":
        data = str(tmp_path / "nowhere")
    elif case == "empty":
        os.makedirs(tmp_path / "empty" / "cats")
        data = str(tmp_path / "empty")
    elif case == "unknown":
        data = str(tmp_path / "d.txt")
        open(data, "w").close()
    elif case == "shape":
        data = str(tmp_path / "flat.npz")
        np.savez(data, x=np.zeros((4, 784), np.float32))
    elif case == "address":
        extra = ["--address", "127.0.0.1:6379"]
    elif case == "batch":
        extra = ["--batch-size", "0"]
    code = main(["audit", DIGITS_CNN, data, "--out", str(tmp_path / "out"), "--composite", composite_file(tmp_path),
                 "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("lrp-onnx: error: ") and message in err
    assert not os.path.exists(tmp_path / "out" / "manifest.json")
