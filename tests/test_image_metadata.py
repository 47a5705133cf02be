"""A model with two float inputs (an image and a metadata vector): relevance for each input,
from Python and from the command line (README, Deployed formats: several float inputs).

Tolerances: LRP-0 with zero biases conserves the relevance put on the output across both
inputs (1e-4 relative: float32 sums over a few hundred terms); the command line's arrays equal
the Python API's to 1e-6 of their scale (the same explainer, another process)."""
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LRP0 = {"rules": [{"where": "all", "rule": {"rule": "LRP0"}}]}


def image_metadata_model(zero_bias=True):
    rng = np.random.default_rng(5)

    def init(name, *shape, bias=False):
        value = np.zeros(shape) if bias and zero_bias else rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 4)
        return numpy_helper.from_array(value.astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["image", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["meta", "mw", "mb"], ["m"], transB=1), helper.make_node("Relu", ["m"], ["mr"]),
             helper.make_node("Concat", ["f", "mr"], ["h"], axis=1), helper.make_node("Gemm", ["h", "gw", "gb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "image_metadata",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [init("cw", 6, 3, 3, 3), init("cb", 6, bias=True), init("mw", 7, 5), init("mb", 7, bias=True), init("gw", 4, 13),
         init("gb", 4, bias=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def batch():
    rng = np.random.default_rng(6)
    return {"image": rng.uniform(0, 1, size=(3, 3, 8, 8)).astype(np.float32),
            "meta": np.abs(rng.normal(size=(3, 5))).astype(np.float32)}


def test_relevance_for_each_input_conserves_over_both():
    ex = lrp_onnx.Explainer(image_metadata_model(), composite=LRP0)
    res = ex.explain(batch())
    assert res.sources["image"].shape == (3, 3, 8, 8) and res.sources["meta"].shape == (3, 5)
    both = res.sources["image"].reshape(3, -1).sum(axis=1) + res.sources["meta"].sum(axis=1)
    np.testing.assert_allclose(both, res.total, rtol=1e-4)
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-4)
    assert np.all(np.abs(res.sources["meta"]).sum(axis=1) > 0) and np.all(np.abs(res.sources["image"]).sum(axis=(1, 2, 3)) > 0)


def test_command_line_draws_the_image_and_lists_the_vector(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(image_metadata_model(), model)
    data = batch()
    np.save(tmp_path / "img.npy", data["image"])
    np.save(tmp_path / "meta.npy", data["meta"])
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "lrp_onnx.cli", "explain", str(model), f"image={tmp_path / 'img.npy'}",
                          f"meta={tmp_path / 'meta.npy'}", "--composite", "epsilon_plus", "--out", str(out), "--save-npy"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    res = lrp_onnx.Explainer(str(model), composite="epsilon_plus").explain(data)
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len([line for line in lines if "predicted" in line]) == 3
    for i in range(3):
        assert (out / f"img_{i}.image.png").is_file()
        image = np.load(out / f"img_{i}.image.relevance.npy")
        meta = np.load(out / f"img_{i}.meta.relevance.npy")
        np.testing.assert_allclose(image, res.sources["image"][i], atol=1e-6 * np.abs(res.sources["image"]).max())
        np.testing.assert_allclose(meta, res.sources["meta"][i], atol=1e-6 * np.abs(res.sources["meta"]).max())
        listed = next(line for line in lines if line.strip().startswith(f"img_{i} meta relevance"))
        values = [float(v) for v in listed.split("[")[1].split("]")[0].split()]
        np.testing.assert_allclose(values, res.sources["meta"][i], rtol=1e-3, atol=1e-4 * np.abs(res.sources["meta"][i]).max())


def test_command_line_names_every_input_of_a_several_input_model(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(image_metadata_model(), model)
    np.save(tmp_path / "img.npy", batch()["image"])
    run = subprocess.run([sys.executable, "-m", "lrp_onnx.cli", "explain", str(model), str(tmp_path / "img.npy"),
                          "--composite", "epsilon_plus", "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    assert "image=FILE" in run.stderr and "meta=FILE" in run.stderr
