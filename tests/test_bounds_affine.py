"""ZBox bounds given for a model's raw input are carried through its in-model preprocessing
(Mul by a scale, Sub of the mean, Div by the std, per channel, behind an NHWC -> NCHW
Transpose) to the first Conv: the relevance equals that of the same model explained with the
preprocessed bounds l' = (l * k - mean) / std given at the Conv input.

Tolerance: 1e-6 of max|R|, as tests/test_bounds.py: both explainers run the same float32
kernels; the carried bounds are computed in float64 and rounded once to float32, the given ones
in float32 (two or three roundings of 2^-24 each), which moves the relevance by a few units of
float32 roundoff. Bounds used at the Conv without being carried (the raw [0, 1] box read as if
it were the normalized one) move it by far more, and the tolerance rejects that.
"""
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import helper, numpy_helper

from handler_models import make_model
from lrp_onnx import Composite, Explainer, Family, First
from lrp_onnx.canonicalize import canonicalize
from lrp_onnx.errors import CompositeError
from lrp_onnx.graph import build_graph
from lrp_onnx.load import infer_shapes, load_model
from lrp_onnx.ops.bounds import layer_bound
from lrp_onnx.rules import Epsilon, ZBox

C, H, W = 3, 5, 4
RTOL = 1e-6
K, MEAN, STD = 1 / 255, np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def cnn(pre):
    """x (N, H, W, C) -> Transpose -> ``pre`` (nodes from "t" to "p") -> Conv -> Relu -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])] + pre + [
        helper.make_node("Conv", ["p", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    params = {"w1": rng.normal(size=(4, C, 3, 3)), "b1": rng.normal(size=4) * 0.1, "w2": rng.normal(size=(6, 4 * H * W)),
              "b2": rng.normal(size=6) * 0.1, "k": np.array(K), "mean": MEAN.reshape(1, C, 1, 1),
              "std": STD.reshape(1, C, 1, 1), "minus": np.array(-1.0)}
    return make_model(nodes, (H, W, C), (6,), params)


PREPROCESS = [helper.make_node("Mul", ["t", "k"], ["s"]), helper.make_node("Sub", ["s", "mean"], ["m"]),
              helper.make_node("Div", ["m", "std"], ["p"])]


def box(low, high, tensor=None):
    return Composite(((First(Family("conv")), ZBox(low, high, tensor=tensor)), (Family("all"), Epsilon())))


def explain(composite, pre=PREPROCESS):
    x = np.random.default_rng(1).uniform(0, 255, size=(2, H, W, C)).astype(np.float32)
    return Explainer(cnn(pre), composite).explain(x, target=2).relevance


def normalized(raw):
    """Raw bounds (per channel) as the Conv input sees them, (C, 1, 1)."""
    return ((np.asarray(raw, np.float64) * K - MEAN) / STD).astype(np.float32).reshape(C, 1, 1) * np.ones((C, H, W), np.float32)


def assert_close(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())


@pytest.mark.parametrize("low, high", [(0.0, 255.0), ([0.0, 10.0, 20.0], [200.0, 250.0, 255.0])])
def test_raw_bounds_are_carried_through_the_preprocessing(low, high):
    want = explain(box(normalized(np.broadcast_to(low, C)), normalized(np.broadcast_to(high, C)), tensor="p"))
    assert_close(explain(box(low, high, tensor="x" if np.ndim(low) == 0 else None)), want)


def test_the_tolerance_rejects_bounds_that_were_not_carried():
    want = explain(box(normalized(np.zeros(C)), normalized(np.full(C, 255.0)), tensor="p"))
    wrong = explain(box(0.0, 255.0, tensor="p"))
    with pytest.raises(AssertionError):
        assert_close(wrong, want)


def test_what_cannot_be_carried_is_refused():
    with pytest.raises(CompositeError, match="do more than move elements and scale or shift them.*tensor='p'"):
        explain(box(np.zeros(C), np.ones(C)), [helper.make_node("Relu", ["t"], ["p"])])


def test_a_negative_scale_is_carried_end_to_end():
    """p = -t: the raw box [l, h] is [-h, -l] at the Conv (explained as if given there)."""
    low, high = np.array([0.0, 10.0, 20.0]), np.array([200.0, 250.0, 255.0])
    at_conv = lambda a: (-a).astype(np.float32).reshape(C, 1, 1) * np.ones((C, H, W), np.float32)  # noqa: E731
    negate = [helper.make_node("Mul", ["t", "minus"], ["p"])]
    want = explain(box(at_conv(high), at_conv(low), tensor="p"), negate)
    assert_close(explain(box(low, high), negate), want)
    with pytest.raises(AssertionError):   # the raw bounds used at the Conv, the scale ignored
        assert_close(explain(box(-at_conv(low), -at_conv(high), tensor="p"), negate), want)


def test_a_negative_scale_swaps_low_and_high():
    """p = t * v + c with v = (-2, 0.5, -1) per channel: where v < 0 the layer's low bound is
    v h + c and its high bound v l + c (ops/bounds.layer_bound given the other bound); without
    it the negative scale is refused. Exact: two float32 products and sums of small numbers."""
    v, c = np.array([-2.0, 0.5, -1.0], np.float32), np.array([1.0, -3.0, 0.25], np.float32)
    pre = [helper.make_node("Mul", ["t", "v"], ["tv"]), helper.make_node("Add", ["tv", "c_shift"], ["p"])]
    proto = cnn(pre)
    proto.graph.initializer.extend([numpy_helper.from_array(v.reshape(1, C, 1, 1), "v"),
                                    numpy_helper.from_array(c.reshape(1, C, 1, 1), "c_shift")])
    proto = load_model(proto)
    canonicalize(proto)
    infer_shapes(proto)
    ctx = SimpleNamespace(graph=build_graph(proto))
    layer_input = next(n for n in proto.graph.node if n.op_type == "Conv").input[0]
    low, high = np.array([0.0, 10.0, 20.0]), np.array([200.0, 250.0, 255.0])
    per_channel = lambda a: np.broadcast_to(a.reshape(1, C, 1, 1), (1, C, H, W))  # noqa: E731
    lower, upper = np.minimum(v * low, v * high) + c, np.maximum(v * low, v * high) + c
    np.testing.assert_array_equal(layer_bound(ctx, "conv", layer_input, low, "low", None, other=high), per_channel(lower))
    np.testing.assert_array_equal(layer_bound(ctx, "conv", layer_input, high, "high", None, other=low), per_channel(upper))
    with pytest.raises(CompositeError, match="multiply by a negative constant"):
        layer_bound(ctx, "conv", layer_input, low, "low", None)
