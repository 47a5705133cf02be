"""The demos: the digits figure from the shipped MLP (as a subprocess, as `make demo` runs it),
and the VGG-16 figure (in process, on the test session's exported VGG-16)."""
import subprocess
import sys

import pytest

from lrp_onnx import demo
from lrp_onnx.errors import InputError, ModelError
from test_render import read_png


def lrp_onnx_cli(*args):
    return subprocess.run([sys.executable, "-m", "lrp_onnx.cli", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_digits_demo_prints_scores_and_writes_the_figure(tmp_path):
    pytest.importorskip("sklearn", reason="the digits come from scikit-learn (the test and demo extras)")
    result = lrp_onnx_cli("demo", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "held-out accuracy" in lines[0]
    scores = lines[1:4]   # the tutorial's "[0] 0.0  [1] 3.6  [2] 49.1 ..." for the first three digits
    assert all([f"[{k}]" for k in range(10)] == line.split()[::2] for line in scores)
    # two rows of twelve 84x84 tiles (28 pixels x 3) with 2-pixel gaps
    image = read_png(tmp_path / "digits_mlp_heatmaps.png")
    assert image.shape == (2 + 2 * 86, 2 + 12 * 86, 3)
    heatmaps = image[88:172].astype(int)
    assert (heatmaps[..., 0] - heatmaps[..., 2] > 60).any(), "no clearly red pixel in the heatmap row"


def test_demo_needs_the_shipped_models(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "MODELS", tmp_path)
    with pytest.raises(ModelError, match="digits_mlp.onnx not found: the demo needs a source checkout"):
        demo.run_digits(str(tmp_path / "out"))


def test_vgg16_demo_writes_pixel_and_layer_heatmaps(vgg16, tmp_path, capsys):
    """explain_vgg16 is what `lrp-onnx demo vgg16` runs after exporting; here on the VGG-16
    that the oracle tests export (seeded random weights), to export it once per session."""
    pytest.importorskip("skimage", reason="the coffee photo comes from scikit-image (the demo extra)")
    _, path = vgg16
    pixels, layers = demo.explain_vgg16(path, str(tmp_path))
    top10 = capsys.readouterr().out.splitlines()[:10]
    scores = [float(line.rsplit(":", 1)[1]) for line in top10]
    assert scores == sorted(scores, reverse=True) and all("(" in line for line in top10)
    assert read_png(pixels).shape == (2 + 226, 2 + 2 * 226, 3)   # photo | heatmap, 224 each
    assert read_png(layers).shape == (2 + 226, 2 + 4 * 226, 3)   # layers 31, 21, 11, 1 scaled to 224


def test_tutorial_layers_are_the_oracles_tensors(vgg16):
    """The demo's layer -> tensor map is the one the tutorial oracle test compares."""
    onnx = pytest.importorskip("onnx")
    from test_tutorial_vgg16 import COMPARED

    model = onnx.load(vgg16[1])
    inputs_of = {node.name: node.input[0] for node in model.graph.node}
    assert demo.tutorial_layer_tensors(model) == {l: inputs_of[n] for l, n in COMPARED.items()}


@pytest.mark.parametrize("args, message", [
    (["demo", "vgg16", "--weights", "missing.pth"], "weights file not found: missing.pth"),
    (["demo", "--weights", "x.pth"], "--weights is for `lrp-onnx demo vgg16`"),
])
def test_demo_errors(args, message):
    result = lrp_onnx_cli(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_vgg16_weights_file_that_is_not_a_state_dict(tmp_path):
    pytest.importorskip("torch", reason="the VGG-16 demo needs the torch extra")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(InputError, match="bad.pth is not a torchvision VGG-16 state dict"):
        demo._vgg16(str(bad))


def test_text_demo_prints_each_pair_and_draws_the_figure(monkeypatch, tmp_path, capsys):
    """run_text on the tiny embedding model and tokenizer of test_text.py (in place of the
    MiniLM export): a cosine per pair, both sentences' words with their relevance, the PNG."""
    import re

    import numpy as np
    import onnx

    from lrp_onnx import Explainer, text
    from test_text import make_tokenizer, pooled_model

    path = tmp_path / "embedder.onnx"
    onnx.save(pooled_model(out_dim=5, seed=1), path)
    folder = make_tokenizer(tmp_path / "tok")
    monkeypatch.setattr(demo, "minilm_export", lambda out_dir: (str(path), folder))
    pairs = (("a man playing guitar", "someone performs music"), ("a man", "stock market fell"))
    out = demo.run_text(str(tmp_path / "out"), pairs)
    printed = capsys.readouterr().out
    explainer = Explainer(str(path), composite="attnlrp")
    for a, b in pairs:
        sim = text.explain_similarity(explainer, text.load_tokenizer(folder), a, b, merge_words=True)
        assert f"cos = {sim.score:+.3f}   A: {a}   B: {b}" in printed
        assert f" A (relevance sum {sim.a.relevance.sum():+.3f}):" in printed
        for token, r in zip(sim.a.tokens + sim.b.tokens, np.concatenate([sim.a.relevance, sim.b.relevance])):
            assert re.search(rf"^  {re.escape(token)} +{re.escape(f'{r:+.4g}')}$", printed, re.M), token
    image = read_png(out)
    assert out.endswith("text_similarity.png") and image.shape[2] == 3
    assert (image.reshape(-1, 3) == [255, 0, 0]).all(axis=1).any() or (image.reshape(-1, 3) == [0, 0, 255]).all(axis=1).any()
