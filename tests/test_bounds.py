"""ZBox bounds in the layout of the tensor the user names (lrp_onnx/ops/bounds.py): an NHWC
model (input transposed before its first Conv, as Keras and JAX export) explained with bounds
given in its own layout gives the relevance of its NCHW twin with the same bounds in NCHW.

Tolerance: both models run the same float32 Conv/Gemm kernels on the same numbers (a
Transpose only moves elements), so the relevance agrees to float32 rounding of the
element-wise steps: 1e-6 of max|R| (about 16 units of float32 roundoff, 2^-24 = 6e-8, for the
handful of products and one division per element). The old reading (bounds reshaped, not
transposed) is 10% of max|R| or more off, and the wrong-layout test checks that this tolerance
rejects it.
"""
import numpy as np
import pytest

from handler_models import make_model
from lrp_onnx import Composite, Explainer, Family, First
from lrp_onnx.errors import CompositeError
from lrp_onnx.rules import Epsilon, ZBox
from onnx import helper

C, H, W = 3, 6, 5
RTOL = 1e-6


def params():
    rng = np.random.default_rng(0)
    return {"w1": rng.normal(size=(4, C, 3, 3)), "b1": rng.normal(size=4) * 0.1,
            "w2": rng.normal(size=(7, 4 * H * W)), "b2": rng.normal(size=7) * 0.1}


def cnn(layout: str, preprocess: bool = False):
    """x -> [Transpose NHWC->NCHW] -> [Sub mean] -> Conv -> Relu -> Flatten -> Gemm."""
    nodes, first = [], "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        first = "x_nchw"
    extra = {}
    if preprocess:
        nodes.append(helper.make_node("Sub", [first, "mean"], ["x_centred"]))
        extra["mean"] = np.full((1, C, 1, 1), 0.5)
        first = "x_centred"
    nodes += [helper.make_node("Conv", [first, "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
              helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
              helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    shape = (H, W, C) if layout == "NHWC" else (C, H, W)
    return make_model(nodes, shape, (7,), {**params(), **extra})


def composite(low, high, tensor=None):
    return Composite(((First(Family("conv")), ZBox(low, high, tensor=tensor)), (Family("all"), Epsilon())))


def inputs():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(2, C, H, W)).astype(np.float32)
    low = rng.uniform(-2, -1, size=(C, H, W)).astype(np.float32)
    high = rng.uniform(1, 2, size=(C, H, W)).astype(np.float32)
    return x, low, high


def nhwc(a):
    return np.moveaxis(a, -3, -1)


def assert_close(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())


def test_per_element_bounds_in_nhwc_match_the_nchw_twin():
    x, low, high = inputs()
    reference = Explainer(cnn("NCHW"), composite(low, high)).explain(x, target=3).relevance
    got = Explainer(cnn("NHWC"), composite(nhwc(low), nhwc(high))).explain(nhwc(x), target=3).relevance
    assert_close(np.moveaxis(got, -1, 1), reference)


def test_per_channel_bounds_in_nhwc_are_along_the_last_axis():
    x, _, _ = inputs()
    low, high = np.array([-1.5, -1.2, -1.1], np.float32), np.array([1.1, 1.3, 1.7], np.float32)
    reference = Explainer(cnn("NCHW"), composite(low, high)).explain(x, target=3).relevance
    got = Explainer(cnn("NHWC"), composite(low, high)).explain(nhwc(x), target=3).relevance
    assert_close(np.moveaxis(got, -1, 1), reference)


def test_the_tolerance_rejects_bounds_read_in_the_wrong_layout():
    """Bounds reshaped (not transposed) onto the NCHW layer: what lrp_onnx did before."""
    x, low, high = inputs()
    reference = Explainer(cnn("NCHW"), composite(low, high)).explain(x, target=3).relevance
    reshaped = Explainer(cnn("NCHW"), composite(nhwc(low).reshape(C, H, W), nhwc(high).reshape(C, H, W)))
    wrong = reshaped.explain(x, target=3).relevance
    with pytest.raises(AssertionError):
        assert_close(wrong, reference)
    assert np.abs(wrong - reference).max() > 0.1 * np.abs(reference).max()


def test_bounds_named_at_the_layer_input_are_read_there():
    x, low, high = inputs()
    reference = Explainer(cnn("NCHW"), composite(low, high)).explain(x, target=3).relevance
    got = Explainer(cnn("NHWC"), composite(low, high, tensor="x_nchw")).explain(nhwc(x), target=3).relevance
    assert_close(np.moveaxis(got, -1, 1), reference)


def test_bounds_are_carried_through_in_model_normalization():
    """Bounds of the raw input reach the layer shifted by the model's Sub of the mean (more
    spellings and the refusals: tests/test_bounds_affine.py)."""
    x, low, high = inputs()
    carried = Explainer(cnn("NCHW", preprocess=True), composite(low, high)).explain(x, target=3).relevance
    centred = Explainer(cnn("NCHW", preprocess=True), composite(low - 0.5, high - 0.5, tensor="x_centred"))
    assert_close(carried, centred.explain(x, target=3).relevance)


@pytest.mark.parametrize("size, message", [(7, r"has 7 values; it is read in the layout of 'x', shape \('N', 6, 5, 3\): "
                                                r"give a scalar, one value per channel \(3, its axis 3\), or a whole sample \(90\)"),
                                           (5, "has 5 values")])
def test_bounds_of_the_wrong_size_are_refused(size, message):
    with pytest.raises(CompositeError, match=message):
        Explainer(cnn("NHWC"), composite(np.full(size, -1.0), np.full(size, 1.0)))


def test_bounds_for_a_tensor_the_model_lacks_are_refused():
    with pytest.raises(CompositeError, match="given for tensor 'nope', which the model does not have"):
        Explainer(cnn("NHWC"), composite(np.full(C, -1.0), np.full(C, 1.0), tensor="nope"))
