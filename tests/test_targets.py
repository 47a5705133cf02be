"""Region targets (lrp_onnx/targets.py): class k over a region of an (N, C, H, W) output, its mask,
the explainer fed with it, and every bad region as an InputError naming the problem."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.compile import MASK_INPUT
from lrp_onnx.errors import InputError
from lrp_onnx.targets import RegionTarget, parse_region
from tolerances import shallow_bound

LRP0_ALL = {"rules": [{"where": "all", "rule": {"rule": "LRP0"}}]}
#: The 1x1 Conv's weights: 3 classes from 2 input channels, on (N, 2, 4, 5) inputs.
W = np.random.default_rng(0).normal(size=(3, 2, 1, 1)).astype(np.float32)
SHAPE = (2, 3, 4, 5)


def dense_model():
    """x (N, 2, 4, 5) -> Conv 1x1 (2 -> 3 classes, no bias): y[n, k] = sum_i W[k, i] x[n, i]."""
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 5])],
                              [numpy_helper.from_array(W, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def symbolic_model():
    """x (N, 3, H, W) -> Relu -> y (N, 3, P, Q): the output's sizes are symbols no input shares,
    known only when it runs (the relevance passes Relu unchanged)."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "symbolic",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "P", "Q"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def explainer():
    return lrp_onnx.Explainer(dense_model(), LRP0_ALL)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).normal(size=(2, 2, 4, 5)).astype(np.float32)


def test_a_box_selects_its_class_and_rows_and_columns_as_slices():
    mask = RegionTarget(1, (1, 3, 2, 5)).mask(SHAPE)
    expected = np.zeros(SHAPE, np.float32)
    expected[:, 1, 1:3, 2:5] = 1
    np.testing.assert_array_equal(mask, expected)


def test_a_boolean_mask_applies_to_every_sample_and_one_per_sample_to_its_own():
    region = np.zeros((4, 5), bool)
    region[0, 0] = region[3, 4] = True
    mask = RegionTarget(2, region).mask(SHAPE)
    assert mask.shape == SHAPE and mask[:, 2].sum() == 4 and mask.sum() == 4
    np.testing.assert_array_equal(mask[1, 2], region)
    per_sample = np.stack([region, ~region])
    mask = RegionTarget(0, per_sample.astype(np.uint8)).mask(SHAPE)   # 0/1 integers are a region too
    np.testing.assert_array_equal(mask[:, 0], per_sample)
    assert mask[:, 1:].sum() == 0


def test_explaining_a_region_is_explaining_its_mask(explainer, x):
    """RegionTarget(k, M) gives the relevance of the mask y * [c == k] * M, and the saved
    explainer fed with that mask in a bare session gives the same."""
    region = np.zeros((2, 4, 5), bool)
    region[0, :2, :3] = True
    region[1, 3, 1:] = True
    res = explainer.explain(x, target=RegionTarget(1, region))
    mask = np.zeros(SHAPE, np.float32)
    mask[:, 1] = region
    by_mask = explainer.explain(x, target=mask)
    np.testing.assert_array_equal(res.relevance, by_mask.relevance)
    np.testing.assert_array_equal(res.target, [1, 1])
    session = ort.InferenceSession(explainer.model.SerializeToString(), providers=["CPUExecutionProvider"])
    _, saved = session.run(None, {"x": x, MASK_INPUT: mask})
    np.testing.assert_array_equal(res.relevance, saved)


def test_the_relevance_is_the_dense_lrp0_formula_and_sums_to_the_region_score(explainer, x):
    """LRP-0 on y_k = sum_i W_ki x_i (per pixel): R_i = x_i W_ki / y_k * y_k * M = x_i W_ki M,
    zero outside M; the total is sum over M of y_k."""
    res = explainer.explain(x, target=RegionTarget(2, (1, 4, 0, 2)))
    region = np.zeros((4, 5))
    region[1:4, 0:2] = 1
    expected = x.astype(np.float64) * W[2, :, 0, 0, None, None] * region
    scale = float(np.abs(expected).max())
    # one product and one division in float32 per element: a-priori bound of a depth-1, fan-in-2 graph
    assert np.abs(res.relevance - expected).max() <= shallow_bound(1, 2, scale)
    y = np.einsum("ki,nihw->nkhw", W[:, :, 0, 0].astype(np.float64), x.astype(np.float64))
    score = (y[:, 2] * region).sum(axis=(1, 2))
    np.testing.assert_allclose(res.total, score, rtol=0, atol=shallow_bound(1, 2, np.abs(y).max()) * region.sum())
    np.testing.assert_allclose(res.relevance.sum(axis=(1, 2, 3)), score, rtol=0,
                               atol=shallow_bound(1, 2, scale) * region.sum() * 2)


def test_a_mask_region_gives_the_sizes_a_symbolic_output_leaves_open():
    ex = lrp_onnx.Explainer(symbolic_model(), LRP0_ALL)
    x = np.random.default_rng(2).normal(size=(2, 3, 6, 7)).astype(np.float32)
    region = np.zeros((6, 7), bool)
    region[2:4, 5] = True
    res = ex.explain(x, target=RegionTarget(1, region))
    expected = np.zeros_like(x)
    expected[:, 1] = np.maximum(x[:, 1], 0) * region
    np.testing.assert_array_equal(res.relevance, expected)   # Relu passes R = y * mask unchanged
    with pytest.raises(InputError, match="known only when it runs: give the region as a boolean"):
        ex.explain(x, target=RegionTarget(0, (0, 1, 0, 1)))


@pytest.mark.parametrize("target, message", [
    (RegionTarget(3, (0, 1, 0, 1)), r"class 3 is out of range: the model has 3 classes"),
    (RegionTarget(-1, (0, 1, 0, 1)), r"class -1 is out of range"),
    (RegionTarget(1.0, (0, 1, 0, 1)), r"class must be an int, got 1.0"),
    (RegionTarget(0, (2, 2, 0, 1)), r"box .* = \(2, 2, 0, 1\) is empty or outside the 4x5 output"),
    (RegionTarget(0, (0, 5, 0, 1)), r"outside the 4x5 output: need 0 <= y0 < y1 <= 4"),
    (RegionTarget(0, np.ones((5, 4), bool)), r"must be \(H, W\) = \(4, 5\) or \(N, H, W\) = \(2, 4, 5\).*got \(5, 4\)"),
    (RegionTarget(0, np.ones((3, 4, 5), bool)), r"\(N, H, W\) = \(2, 4, 5\) like the output's pixels, got \(3, 4, 5\)"),
    (RegionTarget(0, np.ones(5, bool)), r"got \(5,\)"),
    (RegionTarget(0, np.zeros((4, 5), bool)), r"the region is empty for sample\(s\) \[0, 1\]"),
    (RegionTarget(0, np.stack([np.ones((4, 5), bool), np.zeros((4, 5), bool)])), r"empty for sample\(s\) \[1\]"),
    (RegionTarget(0, np.full((4, 5), 0.5)), r"must be a boolean mask \(or 0/1 values\).*dtype float64"),
])
def test_bad_regions_are_input_errors_naming_the_problem(explainer, x, target, message):
    with pytest.raises(InputError, match=message):
        explainer.explain(x, target=target)


def test_a_region_of_a_classifier_output_is_refused():
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W[:, :, 0, 0], "w")])
    ex = lrp_onnx.Explainer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), LRP0_ALL)
    with pytest.raises(InputError, match=r"needs a segmentation output \(N, C, H, W\); this model's output has "
                                         r"shape \(1, 3\): pass a class index"):
        ex.explain(np.ones((1, 2), np.float32), target=RegionTarget(0, (0, 1, 0, 1)))


def test_parse_region_reads_class_and_box_and_names_a_malformed_one():
    assert parse_region("7:0:16:8:24") == RegionTarget(7, (0, 16, 8, 24))
    for text in ("7:0:16:8", "7:0:16:8:x", "a:b:c:d:e", ""):
        with pytest.raises(InputError, match="--target-region must be CLASS:Y0:Y1:X0:X1"):
            parse_region(text)
