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


# --- text: --text, --text-pair, --tokenizer, --merge-words (lrp_onnx/text.py) ----------------

@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    """A tiny token classifier and embedding model (test_text.pooled_model; the embedding one
    marked task=embedding in its metadata, as exporters.huggingface writes) and a tokenizer."""
    from test_text import make_tokenizer, pooled_model

    folder = tmp_path_factory.mktemp("text")
    classifier = pooled_model(out_dim=3)
    embedder = pooled_model(out_dim=5, seed=1)
    onnx.helper.set_model_props(embedder, {"task": "embedding"})
    onnx.save(classifier, folder / "classifier.onnx")
    onnx.save(embedder, folder / "embedder.onnx")
    return folder, make_tokenizer(folder / "tokenizer")


def _printed_tokens(lines):
    """[(token, relevance)] from the CLI's indented "token  value" lines."""
    return [(parts[0], float(parts[1])) for parts in (line.split() for line in lines if line.startswith("  "))]


def test_explain_text_prints_tokens_and_writes_html_png_npy(text_setup, tmp_path):
    from lrp_onnx import text

    folder, tok = text_setup
    out = tmp_path / "out"
    result = lrp_onnx_cli("explain", folder / "classifier.onnx", "--text", "A man playing guitar", "--tokenizer", tok,
                          "--composite", "attnlrp", "--target", "2", "--out", out, "--save-npy")
    assert result.returncode == 0, result.stderr
    expected = text.explain_text(lrp_onnx.Explainer(str(folder / "classifier.onnx"), composite="attnlrp"),
                                 text.load_tokenizer(tok), "A man playing guitar", target=2)
    printed = _printed_tokens(result.stdout.splitlines())
    assert [t for t, _ in printed] == expected.tokens == ["[CLS]", "a", "man", "play", "##ing", "guitar", "[SEP]"]
    np.testing.assert_allclose([r for _, r in printed], expected.relevance, rtol=1e-3, atol=1e-3 * np.abs(expected.relevance).max())
    assert "class 2" in result.stdout and "\x1b[" not in result.stdout   # not a TTY: plain
    np.testing.assert_allclose(np.load(out / "text.relevance.npy"), expected.relevance, rtol=1e-6)
    page = (out / "text.html").read_text()
    assert page.count("<span class='t'") == 7 and "##ing" in page
    image = read_png(out / "text.png").reshape(-1, 3)
    strongest = [255, 0, 0] if expected.relevance[np.abs(expected.relevance).argmax()] > 0 else [0, 0, 255]
    assert (image == strongest).all(axis=1).any()   # the token of largest |R| on full red or blue


def test_explain_text_pair_of_an_embedding_model_explains_the_similarity_both_ways(text_setup, tmp_path, capsys):
    from lrp_onnx import text
    from lrp_onnx.cli import main

    folder, tok = text_setup
    out = tmp_path / "out"
    a, b = "someone performs music", "a man playing guitar on stage"
    assert main(["explain", str(folder / "embedder.onnx"), "--text", a, "--text-pair", b, "--tokenizer", str(tok),
                 "--composite", "attnlrp", "--merge-words", "--out", str(out), "--save-npy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    sim = text.explain_similarity(lrp_onnx.Explainer(str(folder / "embedder.onnx"), composite="attnlrp"),
                                  text.load_tokenizer(tok), a, b, merge_words=True)
    assert lines[0] == f"cos(A, B) = {sim.score:.4f}"
    printed = _printed_tokens(lines)
    assert [t for t, _ in printed] == sim.a.tokens + sim.b.tokens
    assert "performs" in sim.a.tokens and "playing" in sim.b.tokens   # merged words
    np.testing.assert_allclose(np.load(out / "text_a.relevance.npy"), sim.a.relevance, rtol=1e-6)
    np.testing.assert_allclose(np.load(out / "text_b.relevance.npy"), sim.b.relevance, rtol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["text.html", "text.png", "text_a.relevance.npy", "text_b.relevance.npy"]


def test_explain_text_colours_a_terminal_unless_no_color(text_setup, tmp_path, capsys, monkeypatch):
    from lrp_onnx.cli import main

    folder, tok = text_setup
    args = ["explain", str(folder / "classifier.onnx"), "--text", "a man", "--tokenizer", str(tok),
            "--composite", "attnlrp", "--out", str(tmp_path)]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(args) == 0
    coloured = capsys.readouterr().out
    assert "\x1b[48;2;" in coloured and "\x1b[0m" in coloured
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(args) == 0
    assert "\x1b[" not in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("no tokenizer", "--text needs --tokenizer DIR"),
    ("no tokenizer.json", "no tokenizer.json in"),
    ("files and text", "--text explains a text: give no INPUT files"),
    ("pair without text", "--text-pair, --tokenizer and --merge-words go with --text"),
    ("nothing to explain", "explain needs INPUT files (images, .npy), or --text with --tokenizer"),
    ("empty text", "a text to explain must be a non-empty string"),
    ("not a token model", "are not what a tokenizer gives"),
    ("target of a similarity", "--target does not apply to a similarity"),
])
def test_text_errors_exit_2_with_one_line_and_write_nothing(text_setup, model_path, tmp_path, capsys, case, message):
    from lrp_onnx.cli import main

    folder, tok = text_setup
    out = tmp_path / "out"
    base = ["explain", str(folder / "classifier.onnx"), "--out", str(out), "--composite", "attnlrp"]
    args = {
        "no tokenizer": base + ["--text", "a man"],
        "no tokenizer.json": base + ["--text", "a man", "--tokenizer", str(tmp_path)],
        "files and text": base[:2] + ["x.npy"] + base[2:] + ["--text", "a man", "--tokenizer", str(tok)],
        "pair without text": base + ["--text-pair", "a man"],
        "nothing to explain": base,
        "empty text": base + ["--text", " ", "--tokenizer", str(tok)],
        "not a token model": ["explain", model_path, "--text", "a man", "--tokenizer", str(tok), "--out", str(out)],
        "target of a similarity": ["explain", str(folder / "embedder.onnx"), "--text", "a", "--text-pair", "man",
                                   "--tokenizer", str(tok), "--target", "1", "--out", str(out)],
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrp-onnx: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


# --- segmentation: --target-region, --target-mask (lrp_onnx/targets.py) -----------------------

@pytest.fixture(scope="module")
def dense_setup(tmp_path_factory):
    """test_targets.dense_model (a 1x1 Conv: (N, 2, 4, 5) -> (N, 3, 4, 5)) saved, and two inputs."""
    from test_targets import dense_model

    folder = tmp_path_factory.mktemp("dense")
    onnx.save(dense_model(), folder / "dense.onnx")
    x = np.random.default_rng(5).normal(size=(2, 2, 4, 5)).astype(np.float32)
    np.save(folder / "x.npy", x)
    return str(folder / "dense.onnx"), folder / "x.npy", x


def test_explain_a_region_or_a_mask_file_as_the_python_api_does(dense_setup, tmp_path, capsys):
    from lrp_onnx.cli import main
    from lrp_onnx.targets import RegionTarget

    model, inputs, x = dense_setup
    region = np.zeros((4, 5), bool)
    region[1:3, 0] = True
    np.save(tmp_path / "region.npy", region)
    full = np.random.default_rng(6).uniform(size=(3, 4, 5)).astype(np.float32)
    np.save(tmp_path / "full.npy", full)
    ex = lrp_onnx.Explainer(model, "epsilon_plus")
    cases = {
        "box": (["--target-region", "2:0:2:1:4"], RegionTarget(2, (0, 2, 1, 4)), "class 2 over the region"),
        "region": (["--target-mask", tmp_path / "region.npy", "--target", "1"], RegionTarget(1, region),
                   "class 1 over the region"),
        "mask": (["--target-mask", tmp_path / "full.npy"], np.stack([full, full]), "target mask"),
    }
    for case, (options, target, headline) in cases.items():
        out = tmp_path / case
        assert main(["explain", model, str(inputs), "--composite", "epsilon_plus", "--save-npy", "--batch-size", "1",
                     "--out", str(out), *map(str, options)]) == 0
        expected = ex.explain(x, target=target)
        lines = capsys.readouterr().out.splitlines()
        for i in range(2):
            assert lines[i].startswith(f"x_{i}: {headline} (score {expected.total[i]:.4g}), relevance sum "), lines[i]
            np.testing.assert_allclose(np.load(out / f"x_{i}.relevance.npy"), expected.relevance[i], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options, message", [
    (["--target-region", "1:0:2:0"], "--target-region must be CLASS:Y0:Y1:X0:X1 (five integers), got '1:0:2:0'"),
    (["--target-region", "1:0:2:0:1", "--target", "1"], "--target-region gives the class and the region"),
    (["--target-region", "3:0:2:0:1"], "region target class 3 is out of range: the model has 3 classes"),
    (["--target-region", "1:2:2:0:1"], "region box (y0, y1, x0, x1) = (2, 2, 0, 1) is empty or outside the 4x5 output"),
    (["--target-mask", "cube.npy", "--target", "1"], "must be an (H, W) region of the output's pixels for every input"),
    (["--target-mask", "wrong.npy", "--target", "1"], "a region mask must be (H, W) = (4, 5)"),
    (["--target-mask", "wrong.npy"], "a target mask must have the output's shape (2, 3, 4, 5), got (2, 5, 4)"),
    (["--target-mask", "missing.npy"], "input file not found: "),
    (["--classifier", "--target-region", "1:0:2:0:1"], "a region target needs a segmentation output (N, C, H, W)"),
])
def test_region_errors_exit_2_with_one_line_and_write_nothing(dense_setup, model_path, tmp_path, capsys, options,
                                                              message):
    from lrp_onnx.cli import main

    model, inputs, _ = dense_setup
    np.save(tmp_path / "cube.npy", np.ones((2, 4, 5), bool))
    np.save(tmp_path / "wrong.npy", np.ones((5, 4), bool))
    out = tmp_path / "out"
    args = ["explain", model, str(inputs), "--out", str(out), "--composite", "epsilon_plus"]
    if options[0] == "--classifier":   # test_cli's tiny_model: a (N, 5) output
        np.save(tmp_path / "x.npy", np.zeros((3, 4, 4), np.float32))
        args, options = ["explain", model_path, str(tmp_path / "x.npy"), "--out", str(out)], options[1:]
    options = [str(tmp_path / o) if o.endswith(".npy") else o for o in options]
    assert main(args + options) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrp-onnx: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sequence-classification", "causal-lm"])
def test_explain_text_of_exported_hugging_face_models_matches_the_python_api(text_setup, tmp_path, kind):
    """A small BERT classifier and GPT-2 (seeded random weights, the vocabulary of
    test_text's tokenizer) exported by exporters.huggingface, explained from the command line
    with a text pair (BERT) or a prompt (GPT-2: the predicted next token)."""
    transformers = pytest.importorskip("transformers", reason="the Hugging Face exporter needs the text extra")
    pytest.importorskip("torch", reason="the Hugging Face exporter needs the torch extra")
    from exporters.huggingface import export_huggingface
    from lrp_onnx import text
    from test_text import WORDS

    _, tok = text_setup
    small = dict(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=32)
    config = (transformers.BertConfig(**small, num_labels=3) if kind == "sequence-classification" else
              transformers.GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=2, n_head=2, n_positions=32))
    path = export_huggingface(config, tmp_path / f"{kind}.onnx", task=kind).path
    pair = ["--text-pair", "someone performs music"] if kind == "sequence-classification" else []
    result = lrp_onnx_cli("explain", path, "--text", "a man playing guitar", *pair, "--tokenizer", tok,
                          "--composite", "attnlrp", "--out", tmp_path / "out", "--save-npy")
    assert result.returncode == 0, result.stderr
    expected = text.explain_text(lrp_onnx.Explainer(path, composite="attnlrp"), text.load_tokenizer(tok),
                                 "a man playing guitar", pair[1] if pair else None)
    printed = _printed_tokens(result.stdout.splitlines())
    assert [t for t, _ in printed] == expected.tokens
    np.testing.assert_allclose(np.load(tmp_path / "out" / "text.relevance.npy"), expected.relevance, rtol=1e-6)
    described = text.describe_target(expected, text.load_tokenizer(tok))
    assert described in result.stdout
    assert described.startswith("next token" if kind == "causal-lm" else "class")
