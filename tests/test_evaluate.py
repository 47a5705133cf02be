"""lrp_onnx.evaluate (pixel flipping / region perturbation) and ``lrp-onnx evaluate``.

The curves are checked exactly on a linear model whose contributions are known; the quality
claims (LRP beats random) on models/digits_mlp.onnx (no ../shared needed) and on the LRP
Toolbox's LeNet-5 with MNIST (skipped without ../shared/data), with the margins measured here
minus a stated allowance."""
import csv
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lrp_onnx import evaluate as ev
from lrp_onnx.cli import main
from lrp_onnx.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_MLP = os.path.join(ROOT, "models", "digits_mlp.onnx")
SHARED = os.path.join(ROOT, "..", "shared", "data")
LENET = os.path.join(SHARED, "lrp_toolbox", "LeNet-5.txt")


def linear_model(w: np.ndarray) -> onnx.ModelProto:
    """y = x @ w for flat inputs (N, F), w (F, K)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_curves_of_a_linear_model_are_exact():
    """y_k = sum_i x_i w_ik; relevance x_i w_ik (target k), patch 1, one pixel per step, constant
    0: after k MoRF steps the score is the total minus the k largest contributions (LeRF: the k
    smallest), and the AUCs are the trapezoid means of those curves."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 3))
    x = rng.normal(size=(5, 16)).astype(np.float32)
    target = np.array([0, 1, 2, 0, 1])
    contrib = x * w[:, target].T.astype(np.float32)
    p = ev.Perturbation(patch=1, steps=16, per_step=1, replacement="constant", value=0.0)
    curves = ev.pixel_flipping(linear_model(w), x, contrib, target, p, layout="flat")
    ordered = -np.sort(-contrib, axis=1)
    morf = contrib.sum(1, keepdims=True) - np.concatenate([np.zeros((5, 1)), np.cumsum(ordered, 1)], 1)
    lerf = contrib.sum(1, keepdims=True) - np.concatenate([np.zeros((5, 1)), np.cumsum(ordered[:, ::-1], 1)], 1)
    # 16 float32 products summed, sum|x w| <= ~16: a random walk of sqrt(16) roundings of 2^-24 is 4e-6
    np.testing.assert_allclose(curves.morf, morf, atol=1e-5)
    np.testing.assert_allclose(curves.lerf, lerf, atol=1e-5)
    # a wrong variant fails at this tolerance: the curve of the least relevant first as MoRF
    assert not np.allclose(curves.morf, lerf, atol=1e-5)
    np.testing.assert_allclose(curves.fraction, np.arange(17) / 16)
    mean = morf.mean(0)
    assert curves.auc_morf == pytest.approx(((mean[1:] + mean[:-1]) / 2).mean(), abs=1e-5)
    assert curves.abpc == pytest.approx(curves.abpc_per_sample().mean(), abs=1e-9)
    assert curves.abpc > 0
    normalized = ev.pixel_flipping(linear_model(w), x, contrib, target, p, layout="flat", normalize=True)
    np.testing.assert_allclose(normalized.morf, morf / morf[:, :1], rtol=1e-4, atol=1e-5)


def test_patch_relevance_sums_channels_and_patches():
    r = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    s = ev.patch_relevance(r, 2)
    assert s.shape == (2, 3, 3)   # edge patches are partial
    assert s[1, 0, 0] == r[1, :, :2, :2].sum()
    assert s[0, 2, 2] == r[0, :, 4, 4].sum()
    assert s.sum() == pytest.approx(r.sum())
    # NHWC is read as NCHW after moving the channels
    nhwc = r.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ev.patch_relevance(ev._to_nchw(nhwc, "NHWC", None), 2), s)


def test_orders_and_seeded_tie_breaking():
    scores = np.array([[[3.0, 1.0], [2.0, 0.0]]])
    o = ev.orders(scores)
    assert o["morf"].tolist() == [[0, 2, 1, 3]] and o["lerf"].tolist() == [[3, 1, 2, 0]]
    ties = np.zeros((1, 4, 4))
    a, b, c = ev.orders(ties, seed=1), ev.orders(ties, seed=1), ev.orders(ties, seed=2)
    np.testing.assert_array_equal(a["morf"], b["morf"])
    assert not np.array_equal(a["morf"], c["morf"])


def test_replacements():
    img = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    noise = ev.replacement_image(img, ev.Perturbation(replacement="uniform", low=-1, high=2, seed=3))
    assert noise.min() >= -1 and noise.max() <= 2
    np.testing.assert_array_equal(noise, ev.replacement_image(img, ev.Perturbation(replacement="uniform", low=-1, high=2, seed=3)))
    flat = np.full_like(img, 0.7)
    np.testing.assert_allclose(ev.replacement_image(flat, ev.Perturbation(replacement="blur")), flat, rtol=1e-6)
    blurred = ev.replacement_image(img, ev.Perturbation(replacement="blur", sigma=1.5))
    assert blurred.std() < img.std() / 2   # smoothing white noise
    assert (ev.replacement_image(img, ev.Perturbation(value=-1.0)) == -1).all()


def test_batch_size_and_layout_do_not_change_the_curves():
    """One run of every perturbed copy or runs of 7 rows; NHW vs flat layout of the same image."""
    from exporters.digits import digits_28x28

    x = digits_28x28()[0][:10].astype(np.float32)
    r = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    p = ev.Perturbation(patch=4, steps=6, replacement="uniform", seed=1)
    big = ev.pixel_flipping(DIGITS_MLP, x, r, perturbation=p)
    small = ev.pixel_flipping(DIGITS_MLP, x, r, perturbation=p, batch_size=7)
    np.testing.assert_array_equal(big.morf, small.morf)
    np.testing.assert_array_equal(big.lerf, small.lerf)
    assert ev.infer_layout((784,)) == "flat" and ev.infer_layout((3, 8, 8)) == "NCHW" and ev.infer_layout((32, 32, 1)) == "NHWC"


def test_bad_input_is_a_clear_error():
    x = np.zeros((2, 784), np.float32)
    with pytest.raises(InputError, match="relevance has shape"):
        ev.pixel_flipping(DIGITS_MLP, x, np.zeros((2, 783)))
    with pytest.raises(InputError, match="unknown replacement"):
        ev.Perturbation(replacement="zeros")
    with pytest.raises(InputError, match="patch must be a positive int"):
        ev.Perturbation(patch=0)
    with pytest.raises(InputError, match="larger than the image"):
        ev.pixel_flipping(DIGITS_MLP, x, x, perturbation=ev.Perturbation(patch=40))
    with pytest.raises(InputError, match="targets must lie"):
        ev.pixel_flipping(DIGITS_MLP, x, x, target=10)
    with pytest.raises(InputError, match="image_shape"):
        ev.pixel_flipping(DIGITS_MLP, x, x, layout="flat", image_shape=(20, 20))
    with pytest.raises(InputError, match="expects"):
        ev.pixel_flipping(DIGITS_MLP, np.zeros((2, 900), np.float32), np.zeros((2, 900)))
    with pytest.raises(InputError, match="finite"):
        ev.pixel_flipping(DIGITS_MLP, x, np.full((2, 784), np.nan))


def test_lrp_beats_random_on_digits_mlp():
    """models/digits_mlp.onnx, 100 held-out digits, 4x4 patches, 8 steps, uniform noise in
    [-1, 1]: measured ABPC tutorial_mlp 24.44, gradient_x_input 26.79, random -0.47 (standard
    errors ~1.0, 1.0, 0.5). Asserted: the measured margins over random (24.9, 27.3) minus an
    allowance of 5 (~4.5 standard errors of the difference), and random within 2.5 of 0."""
    from exporters.digits import digits_28x28, split

    x, y = digits_28x28()[:2]
    test_idx = split(len(x))[1][:100]
    p = ev.Perturbation(patch=4, steps=8, replacement="uniform", low=-1.0, high=1.0)
    res = ev.compare(DIGITS_MLP, x[test_idx], ["tutorial_mlp", "gradient_x_input", "random"], target=y[test_idx], perturbation=p)
    assert res["tutorial_mlp"].abpc - res["random"].abpc > 24.9 - 5
    assert res["gradient_x_input"].abpc - res["random"].abpc > 27.3 - 5
    assert abs(res["random"].abpc) < 2.5


@pytest.mark.skipif(not os.path.isfile(LENET), reason="needs ../shared/data (LRP Toolbox LeNet-5 and MNIST)")
def test_lrp_beats_random_on_lenet5(tmp_path):
    """The LRP Toolbox's LeNet-5, the first 100 MNIST test digits, 4x4 patches, 8 steps, uniform
    noise in [-1, 1], true labels explained (the README's table uses 500 digits, 2x2 patches,
    32 steps). Measured ABPC: LRP-0 15.16, LRP-epsilon 15.13, epsilon_plus_flat 12.79,
    alpha2-beta1 14.43, epsilon_gamma_box 14.11, random 0.03 (standard error of each
    difference to random ~0.5). Asserted: every LRP variant beats random by the smallest measured
    margin (12.76, epsilon_plus_flat) minus an allowance of 3 (~6 standard errors)."""
    pytest.importorskip("scipy", reason="reading MNIST's .mat needs scipy")
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    x, labels = quality.mnist_test(100)
    path = str(tmp_path / "lenet5.onnx")
    layers = quality.lenet_model(path)
    methods = {k: v for k, v in quality.lenet_methods(layers).items() if k not in ("gradient", "gradient x input")}
    p = ev.Perturbation(patch=4, steps=8, replacement="uniform", low=-1.0, high=1.0)
    res = ev.compare(path, x, methods, target=labels, perturbation=p, layout="NHWC")
    random = res.pop("random").abpc
    margins = {k: c.abpc - random for k, c in res.items()}
    assert min(margins.values()) > 12.76 - 3, margins
    assert abs(random) < 1.5


# --- the command line ------------------------------------------------------------------------

def test_cli_evaluate_writes_plot_and_tables(tmp_path, capsys):
    from exporters.digits import digits_28x28

    x, y = digits_28x28()[:2]
    data = tmp_path / "digits.npz"
    np.savez(data, x=x[:20].astype(np.float32), y=y[:20])
    out = tmp_path / "q"
    code = main(["evaluate", DIGITS_MLP, str(data), "--methods", "epsilon_plus_flat,gradient_x_input,random",
                 "--patch", "7", "--steps", "4", "--out", str(out)])
    assert code == 0
    with open(out / "curves.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "quality.csv")))
    assert [r["method"] for r in rows] == ["epsilon_plus_flat", "gradient_x_input", "random"]
    for r in rows:
        assert float(r["abpc"]) == pytest.approx(float(r["auc_lerf"]) - float(r["auc_morf"]), abs=1e-4)
    assert "| gradient_x_input |" in (out / "quality.md").read_text()
    assert "ABPC" in capsys.readouterr().out


def test_cli_evaluate_errors_exit_2(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((3, 784), np.float32))
    assert main(["evaluate", DIGITS_MLP, str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o")]) == 2
    assert main(["evaluate", DIGITS_MLP, str(data), "--methods", "nonsense", "--out", str(tmp_path / "o")]) == 2
    assert "unknown composite 'nonsense'" in capsys.readouterr().err
    assert main(["evaluate", DIGITS_MLP, str(data), "--replacement", "blur", "--sigma", "0", "--out", str(tmp_path / "o")]) == 2
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((3, 784)))
    assert main(["evaluate", DIGITS_MLP, str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "needs an array 'x'" in capsys.readouterr().err
