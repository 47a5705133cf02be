"""The explainer outside Python: the page of web/ in a real Chromium (onnxruntime-web, WASM)
and web/explain.mjs in Node (onnxruntime-node), against Python's onnxruntime running the same
saved explainer file; `lrp-onnx web` and the Node CLI's errors.

Tolerance: the browser, Node and Python run the same file, the same graph in float32, with
onnxruntime's CPU kernels (native in Python and Node, compiled to WASM in the browser, whose
SIMD is 128 bits wide where the native ones use AVX); they may differ only in the order of
summation, a few float32 ulps of the largest terms of a sum, so 1e-5 of max|R| (about 100 ulps)
bounds the difference with a wide margin. The measured maxima are printed (pytest -s) and
quoted in the README.
"""
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.cli import main
from lrp_onnx.images import PRESETS, fit, load_image
from lrp_onnx.render import gray, overlay, tutorial_heatmap, write_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = os.path.join(ROOT, "web")
MLP = os.path.join(ROOT, "models", "digits_mlp.onnx")
CHROMIUM = "/usr/bin/chromium"
#: Chromium's flags for a closed network (its background connections would hang otherwise).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
TOLERANCE = 1e-5   # of max|R| (and of max|output|), see the module docstring

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (make test installs it as root)")
needs_npm_packages = pytest.mark.skipif(
    not os.path.isfile(os.path.join(WEB, "vendor", "ort.webgpu.min.mjs")),
    reason="web/'s npm packages are not installed: run `npm ci` in web/ (make test does)")
needs_chromium = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                    reason=f"no {CHROMIUM} (apt-get install chromium; make test does as root)")


def mask_for(n, target):
    """lrp_target_mask for n digits: NaN (the predicted class) or one-hot at target."""
    mask = np.full((n, 10), np.nan if target is None else 0, np.float32)
    if target is not None:
        mask[:, target] = 1
    return mask


def reference(path_or_bytes, x, target=None):
    """(output, relevance) of Python's onnxruntime running the explainer file."""
    session = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "lrp_target_mask": mask_for(len(x), target)})


def max_differences(output, relevance, ref_output, ref_relevance):
    """max|difference| of output and relevance, each relative to the reference's max|.|."""
    return (float(np.abs(output - ref_output).max() / np.abs(ref_output).max()),
            float(np.abs(relevance - ref_relevance).max() / np.abs(ref_relevance).max()))


@pytest.fixture(scope="module")
def digits():
    """Three held-out digits (3, 784) in [-1, 1], as the demo takes them, and their labels."""
    from exporters.digits import digits_28x28, split

    x, y = digits_28x28()
    test = split(len(x))[1][:3]
    return x[test], y[test]


@pytest.fixture(scope="module")
def saved_explainer(tmp_path_factory):
    """The digits MLP's explainer (tutorial_mlp), saved by the Python API."""
    path = tmp_path_factory.mktemp("web") / "digits_mlp_explainer.onnx"
    lrp_onnx.Explainer(MLP, "tutorial_mlp").save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def exported(saved_explainer, tmp_path_factory):
    """`lrp-onnx web EXPLAINER --export DIR`: the static page with the explainer file it runs."""
    out = tmp_path_factory.mktemp("site")
    assert main(["web", saved_explainer, "--preprocess", "mnist", "--export", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def server(saved_explainer):
    """`lrp-onnx web EXPLAINER --preprocess mnist --port 0` as a subprocess: its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "lrp_onnx.cli", "web", saved_explainer, "--preprocess", "mnist",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not found:
        proc.kill()
        pytest.fail(f"lrp-onnx web did not start: {line}{proc.stderr.read()}")
    yield found.group(0)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served_bytes(server):
    """The explainer file exactly as the page fetches it."""
    with urllib.request.urlopen(server + "explainer.onnx") as response:
        return response.read()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    """The page in headless Chromium, its explainer loaded (window.lrpOnnx.ready resolved)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the test extra)")
    errors = []
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 900, "height": 560})
        tab = context.new_page()
        tab.on("pageerror", lambda error: errors.append(error))
        tab.goto(server)
        tab.evaluate("window.lrpOnnx.ready")
        yield tab
        context.close()
    assert not errors, errors


EXPLAIN = """async ([data, dims, target]) => {
  const res = await window.lrpOnnx.explain(new Float32Array(data), dims, target);
  return {output: Array.from(res.output), relevance: Array.from(res.relevance), target: res.target};
}"""


@needs_chromium
@needs_npm_packages
@pytest.mark.parametrize("target", [None, 3], ids=["predicted", "class3"])
def test_page_explains_like_python_onnxruntime(page, served_bytes, digits, target):
    x, labels = digits
    assert page.evaluate("window.lrpOnnx.backend") == "wasm"   # --disable-gpu: no WebGPU adapter
    ref_output, ref_relevance = reference(served_bytes, x, target)
    worst = (0.0, 0.0)
    for i in range(len(x)):
        res = page.evaluate(EXPLAIN, [x[i].tolist(), [1, 784], target])
        output, relevance = np.float32(res["output"]), np.float32(res["relevance"])
        assert res["target"] == (int(ref_output[i].argmax()) if target is None else target)
        worst = tuple(map(max, worst, max_differences(output, relevance, ref_output[i], ref_relevance[i])))
    print(f"\nbrowser (onnxruntime-web {target=}): max|output diff|/max|output| = {worst[0]:.2e}, "
          f"max|R diff|/max|R| = {worst[1]:.2e} over {len(x)} digits (labels {labels.tolist()})")
    assert worst[0] <= TOLERANCE and worst[1] <= TOLERANCE


@needs_chromium
@needs_npm_packages
def test_page_rejects_a_batch_and_a_wrong_shape(page):
    for dims, message in (([2, 784], "one sample"), ([1, 10], "takes [?, 784]")):
        error = page.evaluate("async (dims) => window.lrpOnnx.explain(new Float32Array(dims[0] * dims[1]), dims, null)"
                              ".then(() => '', (err) => err.message)", dims)
        assert message in error


@needs_chromium
@needs_npm_packages
def test_page_presets_are_pythons(page):
    presets = page.evaluate("window.lrpOnnx.presets")
    for name, spec in PRESETS.items():
        assert presets[name] == {k: list(v) if isinstance(v, tuple) else v for k, v in spec.__dict__.items()}, name


@needs_chromium
@needs_npm_packages
def test_page_ui_draws_the_prediction_heatmap_and_overlay(page, served_bytes, digits, tmp_path):
    """A digit PNG set on the file input: the predicted class is shown, the input is
    preprocessed as lrp_onnx.images does, and the canvases hold the tutorial's heatmap and
    overlay of the page's relevance, pixel for pixel (to one level of 255); then a class is picked."""
    x, _ = digits
    png = tmp_path / "digit.png"
    write_png(png, gray(x[1].reshape(28, 28), -1, 1))
    expected_input = load_image(str(png), PRESETS["mnist"], fit(PRESETS["mnist"], (1, 784)))[0]
    ref_output, _ = reference(served_bytes, expected_input[None])
    predicted = int(ref_output[0].argmax())

    page.set_input_files("#image-file", str(png))
    page.wait_for_selector("body[data-state=explained]")
    assert page.get_attribute("#predicted", "data-class") == str(predicted)
    assert f"predicted class {predicted}" in page.inner_text("#predicted")
    last = page.evaluate("({data: Array.from(window.lrpOnnx.last.data), relevance: Array.from(window.lrpOnnx.last.relevance)})")
    np.testing.assert_allclose(last["data"], expected_input, atol=1e-6)
    heat = np.float64(last["relevance"]).reshape(28, 28)
    image = gray(expected_input.reshape(28, 28), -1, 1)
    for canvas, rgb in (("heatmap", tutorial_heatmap(heat)), ("overlay", overlay(image, heat))):
        pixels = page.evaluate(f"Array.from(document.getElementById('{canvas}').getContext('2d').getImageData(0, 0, 28, 28).data)")
        drawn = np.array(pixels).reshape(28, 28, 4)[..., :3]
        assert np.abs(drawn - (np.clip(rgb, 0, 1) * 255 + 0.5).astype(int)).max() <= 1, canvas
        assert len(np.unique(drawn.reshape(-1, 3), axis=0)) > 10, canvas   # a picture, not a blank canvas

    shot = tmp_path / "web_page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("LRP_ONNX_WEB_SCREENSHOT"):   # the README's picture: docs/web_page.png
        shutil.copy(shot, os.environ["LRP_ONNX_WEB_SCREENSHOT"])

    other = (predicted + 1) % 10
    page.evaluate("document.body.dataset.state = ''")
    page.select_option("#target", str(other))
    page.wait_for_selector("body[data-state=explained]")
    assert f"explaining class {other}" in page.inner_text("#predicted")


def node_explain(*args):
    return subprocess.run(["node", os.path.join(WEB, "explain.mjs"), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@needs_node
@needs_npm_packages
@pytest.mark.parametrize("target", [None, 7], ids=["predicted", "class7"])
def test_node_cli_explains_like_python_onnxruntime(exported, digits, tmp_path, target):
    x, _ = digits
    np.save(tmp_path / "digits.npy", x)
    extra = [] if target is None else ["--target", target]
    result = node_explain(exported / "explainer.onnx", tmp_path / "digits.npy", "--out", tmp_path / "r.npy",
                          "--logits", tmp_path / "o.npy", *extra)
    assert result.returncode == 0, result.stderr
    ref_output, ref_relevance = reference(str(exported / "explainer.onnx"), x, target)
    relevance, output = np.load(tmp_path / "r.npy"), np.load(tmp_path / "o.npy")
    assert relevance.dtype == np.float32 and relevance.shape == x.shape and output.shape == (3, 10)
    targets = [int(t) for t in re.findall(r"target (\d+)", result.stdout)]
    assert targets == (ref_output.argmax(1).tolist() if target is None else [target] * 3)
    worst = max_differences(output, relevance, ref_output, ref_relevance)
    print(f"\nNode (onnxruntime-node {target=}): max|output diff|/max|output| = {worst[0]:.2e}, "
          f"max|R diff|/max|R| = {worst[1]:.2e} over {len(x)} digits")
    assert worst[0] <= TOLERANCE and worst[1] <= TOLERANCE


@needs_node
@needs_npm_packages
def test_node_cli_takes_one_float64_sample_without_a_batch_axis(exported, digits, tmp_path):
    x, _ = digits
    np.save(tmp_path / "one.npy", x[0].astype(np.float64))   # read as float32
    assert node_explain(exported / "explainer.onnx", tmp_path / "one.npy", "--out", tmp_path / "r.npy").returncode == 0
    _, ref_relevance = reference(str(exported / "explainer.onnx"), x[:1])
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), ref_relevance[0], atol=TOLERANCE * np.abs(ref_relevance).max())


@needs_npm_packages
def test_export_keeps_the_saved_explainers_function(saved_explainer, exported, digits):
    """Saved explainers have the lowest IR version their opsets need (onnxruntime-web/-node 1.30
    read IR <= 13); the exported file computes exactly what the saved explainer computes."""
    assert onnx.load(saved_explainer).ir_version <= 13 and onnx.load(str(exported / "explainer.onnx")).ir_version <= 13
    assert {p.name for p in exported.iterdir()} >= {"index.html", "page.mjs", "lrp.mjs", "vendor", "config.json"}
    x, _ = digits
    for new, old in zip(reference(str(exported / "explainer.onnx"), x), reference(saved_explainer, x)):
        np.testing.assert_array_equal(new, old)


@needs_npm_packages
def test_web_compiles_a_plain_model_with_the_composite(saved_explainer, digits, tmp_path):
    assert main(["web", MLP, "--composite", "tutorial_mlp", "--preprocess", "mnist", "--export", str(tmp_path)]) == 0
    x, _ = digits
    for new, old in zip(reference(str(tmp_path / "explainer.onnx"), x), reference(saved_explainer, x)):
        np.testing.assert_allclose(new, old, rtol=0, atol=TOLERANCE * np.abs(old).max())


@needs_node
@needs_npm_packages
@pytest.mark.parametrize("case, message", [
    ("missing", "explainer file not found"),
    ("not_onnx", "is not a readable ONNX model"),
    ("plain_model", "not an lrp_onnx explainer"),
    ("new_ir", "compile it again with `lrp-onnx compile MODEL -o EXPLAINER`"),
    ("wrong_shape", "input of shape [3, 5]"),
    ("int_npy", "give float32"),
    ("target", "target 10 is out of range"),
    ("usage", "usage: node web/explain.mjs"),
])
def test_node_cli_errors_exit_2_with_one_line(exported, saved_explainer, digits, tmp_path, case, message):
    x, _ = digits
    np.save(tmp_path / "digits.npy", x)
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), np.float32))
    np.save(tmp_path / "int.npy", np.zeros((3, 784), np.int64))
    (tmp_path / "notes.onnx").write_text("not a model")
    explainer, data, extra = exported / "explainer.onnx", tmp_path / "digits.npy", []
    if case == "missing":
        explainer = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        explainer = tmp_path / "notes.onnx"
    elif case == "plain_model":
        explainer = os.path.join(ROOT, "models", "digits_cnn.onnx")
    elif case == "new_ir":
        model = onnx.load(saved_explainer)
        model.ir_version = 14   # what onnx 1.20+ writes unless told otherwise (compile.lowest_ir_version)
        explainer = tmp_path / "ir14.onnx"
        onnx.save(model, explainer)
    elif case == "wrong_shape":
        data = tmp_path / "wrong.npy"
    elif case == "int_npy":
        data = tmp_path / "int.npy"
    elif case == "target":
        extra = ["--target", "10"]
    args = [explainer] if case == "usage" else [explainer, data, "--out", tmp_path / "r.npy", *extra]
    result = node_explain(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("explain.mjs: error:") and message in lines[0], lines
    assert not (tmp_path / "r.npy").exists()


def _half_explainer(path):
    """A model with an input named lrp_target_mask but no output lrp_relevance."""
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["lrp_target_mask", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("lrp_target_mask", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _vector_model(path):
    """A Gemm on 5 numbers: no image fits its input."""
    w = numpy_helper.from_array(np.ones((5, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@needs_npm_packages
@pytest.mark.parametrize("case, message", [
    ("missing", "model file not found"),
    ("not_onnx", "is not a readable ONNX model"),
    ("half_explainer", "not an lrp_onnx explainer"),
    ("wrong_shape", "no fixed image size"),
    ("port", "--port must be between 0 and 65535"),
    ("busy_port", "cannot listen on 127.0.0.1"),
])
def test_web_cli_errors_exit_2_with_one_line(case, message, tmp_path, capsys):
    import socket

    model, extra = tmp_path / "model.onnx", []
    (tmp_path / "notes.onnx").write_text("not a model")
    if case == "not_onnx":
        model = tmp_path / "notes.onnx"
    elif case == "half_explainer":
        _half_explainer(model)
    elif case == "wrong_shape":
        _vector_model(model)
    elif case in ("port", "busy_port"):
        model, extra = MLP, ["--composite", "tutorial_mlp", "--preprocess", "mnist"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = 99999 if case == "port" else busy.getsockname()[1]
        code = main(["web", str(model), "--port", str(port), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lrp-onnx: error:") and message in lines[0], lines
