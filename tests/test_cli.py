"""The lrp-onnx command line, run as a subprocess: explain, compile, inspect, and its errors."""
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from test_render import read_png


def lrp_onnx_cli(*args, cwd=None, prelude="pass"):
    """Run ``lrp-onnx ARGS`` in a fresh interpreter (``prelude``: Python run first)."""
    code = f"import sys; {prelude}; from lrp_onnx.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def tiny_model(extra_nodes=(), last="y"):
    """Conv(3->2, 3x3, pad 1) - Relu - Flatten - Gemm(32 -> 5) on (N, 3, 4, 4); ``extra_nodes``
    go after the Gemm, ``last`` names the output."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "V"], ["y"], name="fc", transB=1), *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "W"),
                               numpy_helper.from_array(rng.normal(size=(5, 32)).astype(np.float32), "V")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.onnx"
    onnx.save(tiny_model(), path)
    return str(path)


def test_compile_writes_an_explainer_that_bare_onnxruntime_runs(model_path, tmp_path):
    out = tmp_path / "explainer.onnx"
    result = lrp_onnx_cli("compile", model_path, "-o", out, "--composite", "epsilon_plus")
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    logits, relevance = session.run(None, {"x": x, "lrp_target_mask": np.full((2, 5), np.nan, np.float32)})
    expected = lrp_onnx.Explainer(model_path, "epsilon_plus").explain(x)
    np.testing.assert_allclose(relevance, expected.relevance, rtol=1e-5, atol=1e-6)


def test_inspect_lists_the_rule_of_every_relevance_carrying_node(model_path):
    result = lrp_onnx_cli("inspect", model_path)
    assert result.returncode == 0, result.stderr
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in result.stdout.splitlines()[1:-1])}
    assert rows["conv"][:2] == ["Conv", "(N, 2, 4, 4)"] and rows["conv"][2].startswith("ZBox(")
    assert rows["relu"] == ["Relu", "(N, 2, 4, 4)", "pass"]
    assert rows["flat"] == ["Flatten", "(N, 32)", "pass (inverse shape op)"]
    assert rows["fc"][:2] == ["Gemm", "(N, 5)"] and rows["fc"][2].startswith("Epsilon(")
    assert set(rows) == {"conv", "relu", "flat", "fc"}
    assert "4 nodes carry relevance, 2 take a rule of composite 'epsilon_gamma_box'" in result.stdout


def test_inspect_lists_unsupported_ops_of_a_model_that_cannot_be_compiled(tmp_path):
    path = tmp_path / "cos.onnx"
    onnx.save(tiny_model([helper.make_node("Cos", ["y"], ["out"], name="cosine")], last="out"), path)
    result = lrp_onnx_cli("inspect", path)
    assert result.returncode == 1, result.stderr
    assert ["cosine", "Cos", "(N, 5)", "UNSUPPORTED (no relevance handler)"] in [
        re.split(r"\s{2,}", line) for line in result.stdout.splitlines()]
    assert "the model cannot be explained with 'epsilon_gamma_box':" in result.stdout
    assert "  - no relevance handler in lrp_onnx: node 'cosine' (Cos); lrp_onnx has no LRP rule" in result.stdout


def _write_png(path, pixels):
    Image = pytest.importorskip("PIL.Image", reason="reading images needs Pillow (the images extra)")
    Image.fromarray(pixels).save(path)


def test_explain_an_image_writes_a_heatmap_and_the_relevance(model_path, tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    _write_png(tmp_path / "photo.png", pixels)
    out = tmp_path / "out"
    result = lrp_onnx_cli("explain", model_path, tmp_path / "photo.png", "--out", out, "--save-npy",
                          "--preprocess", "imagenet", "--composite", "epsilon_plus")
    assert result.returncode == 0, result.stderr
    # the same input through the Python API: 6x8 centre-cropped to 6x6, resized to 4x4, normalised
    from lrp_onnx.images import fit, load_image, preprocess_from
    spec = preprocess_from("imagenet")
    x, _ = load_image(tmp_path / "photo.png", spec, fit(spec, ("N", 3, 4, 4)))
    expected = lrp_onnx.Explainer(model_path, "epsilon_plus").explain(x[None])
    np.testing.assert_allclose(np.load(out / "photo.relevance.npy"), expected.relevance[0], rtol=1e-5, atol=1e-6)
    # photo | heatmap | overlay, each 4x4 scaled by 56 to 224, 2-pixel gaps
    assert read_png(out / "photo.png").shape == (2 + 226, 2 + 3 * 226, 3)
    k = int(expected.target[0])
    assert result.stdout.startswith(f"photo: predicted {k} (score {expected.output[0, k]:.4g}), target {k}, "
                                    f"relevance sum {expected.relevance[0].sum(dtype=np.float64):.4g}")
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "photo.relevance.npy"]


def test_explain_npy_batches_with_a_target_layers_and_a_progress_bar(model_path, tmp_path):
    x = np.random.default_rng(3).normal(size=(5, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "batch.npy", x)
    np.save(tmp_path / "one.npy", x[0])
    out = tmp_path / "out"
    result = lrp_onnx_cli("explain", model_path, tmp_path / "batch.npy", tmp_path / "one.npy", "--target", "3",
                          "--batch-size", "2", "--layers", "r", "--save-npy", "--cmap", "coldnhot", "--out", out)
    assert result.returncode == 0, result.stderr
    expected = lrp_onnx.Explainer(model_path).explain(np.concatenate([x, x[:1]]), target=3, layers=["r"])
    names = [f"batch_{i}" for i in range(5)] + ["one"]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == names
    assert all(", target 3, " in line for line in lines)
    for i, name in enumerate(names):
        np.testing.assert_allclose(np.load(out / f"{name}.relevance.npy"), expected.relevance[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.load(out / f"{name}.r.npy"), expected.layers["r"][i], rtol=1e-5, atol=1e-6)
        assert read_png(out / f"{name}.png").shape == (228, 2 + 3 * 226, 3)   # input | heatmap | overlay
        assert read_png(out / f"{name}.r.png").shape == (224, 224, 3)        # 2x4x4 summed to 4x4
    assert "explaining [" in result.stderr and "6/6" in result.stderr      # more than 4 inputs: a bar


def _corrupt(model_path, tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(open(model_path, "rb").read()[:200])
    return path


@pytest.mark.parametrize("case, message", [
    ("missing model", "model file not found: "),
    ("not onnx", "text.onnx is not a readable ONNX model"),
    ("corrupt model", "is not a readable ONNX model"),
    ("missing input", "input file not found: "),
    ("wrong shape", "has shape (3, 5, 5); the model takes samples of shape (3, 4, 4)"),
    ("wrong dtype", "has dtype <U3; the model takes float32 numbers"),
    ("target out of range", "target [7] is out of range: the model has 5 outputs"),
    ("unknown composite", "unknown composite 'nope'"),
    ("unknown preset", "unknown composite 'nope'; presets:"),
    ("unknown preprocessing", "unknown preprocessing 'cifar'"),
    ("unknown layer", "no relevance for tensor(s) ['nope']"),
    ("unwritable output", "No such file or directory"),
    ("no pillow", "reading PNG/JPEG images needs Pillow: pip install 'lrp_onnx[images]'"),
])
def test_errors_exit_2_with_one_line_and_write_nothing(model_path, tmp_path, case, message):
    good = tmp_path / "x.npy"
    np.save(good, np.zeros((3, 4, 4), np.float32))
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    np.save(tmp_path / "shape.npy", np.zeros((3, 5, 5), np.float32))
    np.save(tmp_path / "str.npy", np.array(["abc"]))
    (tmp_path / "preset.json").write_text('{"preset": "nope"}')
    (tmp_path / "a.png").write_bytes(b"")
    out = tmp_path / "out"
    explain = ["explain", model_path, good, "--out", out]
    args = {
        "missing model": ["explain", tmp_path / "missing.onnx", good, "--out", out],
        "not onnx": ["explain", tmp_path / "text.onnx", good, "--out", out],
        "corrupt model": ["explain", _corrupt(model_path, tmp_path), good, "--out", out],
        "missing input": ["explain", model_path, tmp_path / "missing.npy", "--out", out],
        "wrong shape": ["explain", model_path, good, tmp_path / "shape.npy", "--out", out],
        "wrong dtype": ["explain", model_path, good, tmp_path / "str.npy", "--out", out],
        "target out of range": explain + ["--target", "7"],
        "unknown composite": explain + ["--composite", "nope"],
        "unknown preset": explain + ["--composite", tmp_path / "preset.json"],
        "unknown preprocessing": explain + ["--preprocess", "cifar"],
        "unknown layer": explain + ["--layers", "nope"],
        "unwritable output": ["compile", model_path, "-o", tmp_path / "no-dir" / "x.onnx"],
        "no pillow": ["explain", model_path, tmp_path / "a.png", "--out", out],
    }[case]
    result = lrp_onnx_cli(*args, prelude="sys.modules['PIL'] = None" if case == "no pillow" else "pass")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("lrp-onnx: error:") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
    assert not any(p.name.endswith(".partial") for p in tmp_path.rglob("*"))


def test_debug_shows_the_traceback(model_path, tmp_path):
    result = lrp_onnx_cli("--debug", "inspect", tmp_path / "missing.onnx")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ModelError" in result.stderr
