"""The lrp-onnx command line, run as a subprocess."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from test_render import read_png


def lrp_onnx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lrp_onnx.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "V"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "W"),
                               numpy_helper.from_array(rng.normal(size=(5, 32)).astype(np.float32), "V")])
    path = tmp_path_factory.mktemp("cli") / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def test_compile_writes_an_explainer_that_bare_onnxruntime_runs(model_path, tmp_path):
    out = tmp_path / "explainer.onnx"
    result = lrp_onnx("compile", model_path, "-o", str(out), "--composite", "epsilon_plus")
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    logits, relevance = session.run(None, {"x": x, "lrp_target_mask": np.full((2, 5), np.nan, np.float32)})
    assert relevance.shape == x.shape and np.isfinite(relevance).all()


def test_inspect_lists_the_rule_of_every_layer(model_path):
    result = lrp_onnx("inspect", model_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("conv") and "Conv" in line and "ZBox" in line for line in lines)
    assert any(line.startswith("fc") and "Gemm" in line and "Epsilon" in line for line in lines)


@pytest.mark.parametrize("args, message", [
    (["inspect", "missing.onnx"], "model file not found: missing.onnx"),
    (["inspect", "{model}", "--composite", "nope"], "unknown composite 'nope'"),
    (["compile", "{model}", "-o", "/nonexistent-dir/x.onnx"], "No such file or directory"),
])
def test_errors_exit_2_with_one_line(model_path, args, message):
    result = lrp_onnx(*[a.format(model=model_path) for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith("lrp-onnx: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_demo_writes_the_digits_figure(tmp_path):
    result = lrp_onnx("demo", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and result.stdout.count("[9]") == 3
    image = read_png(tmp_path / "digits_mlp_heatmaps.png")
    # two rows of twelve 84x84 tiles (28 pixels x 3) with 2-pixel gaps
    assert image.shape == (2 + 2 * 86, 2 + 12 * 86, 3)
