"""canonicalize/layernorm.py on the spellings tf2onnx (Keras' LayerNormalization) and jax2onnx
(flax's LayerNorm, its default decomposed form) write, node for node as they export them at
opset 17: fused into one LayerNormalization, onnxruntime's outputs unchanged, and the same
relevance as the fused node.

Tolerances as tests/test_canonicalize_layernorm.py: outputs 1e-5 of their scale (the fused
kernel sums in another order; E[x^2] - E[x]^2 cancels in float32 to about 2^-24 * E[x^2] /
var, a few 1e-7 for these unit-variance inputs), relevance 1e-4 of max|R|. The deliberately
wrong reading (the Keras form with its shift dropped, x * r alone) is off by |mean * r| ~ 0.3
of the scale, which the output tolerance rejects.
"""
import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx.canonicalize import fuse_layernorm
from lrp_onnx.canonicalize._match import trailing_constant

from test_canonicalize import check_pass, ops, run
from test_canonicalize_layernorm import B, W, build

RNG = np.random.default_rng(5)
MEAN = helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1)


def keras(bias=True, scale=True, param_shape=(1, 5)):
    """tf2onnx's Keras LayerNormalization: x * r + (-m * r + b), r = gamma / sqrt(var + eps);
    gamma and beta (1, 5), or (1, 1, 5) as Keras writes them for a sequence."""
    nodes = [MEAN, helper.make_node("Neg", ["m"], ["neg"]), helper.make_node("Sub", ["x", "m"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Reciprocal", ["s"], ["r0"])]
    r = "r0"
    if scale:
        nodes.append(helper.make_node("Mul", ["r0", "w"], ["r"]))
        r = "r"
    nodes += [helper.make_node("Mul", ["x", r], ["xr"]), helper.make_node("Mul", ["neg", r], ["mr"])]
    shift = "mr"
    if bias:
        nodes.append(helper.make_node("Add", ["mr", "b"], ["shift"]))
        shift = "shift"
    nodes += [helper.make_node("Add", ["xr", shift], ["y0"]), helper.make_node("Relu", ["y0"], ["y"])]
    return build(nodes, {"eps": np.array(1e-3, np.float32), "w": W[-1].reshape(param_shape),
                         "b": B[-1].reshape(param_shape)})


def jax():
    """jax2onnx's decomposed LayerNorm: the variance as E[x^2] - E[x]^2, guarded by Max(., 0)."""
    nodes = [MEAN, helper.make_node("Sub", ["x", "m"], ["d"]), helper.make_node("Mul", ["x", "x"], ["xx"]),
             helper.make_node("ReduceMean", ["xx"], ["m2"], axes=[-1], keepdims=1), helper.make_node("Mul", ["m", "m"], ["mm"]),
             helper.make_node("Sub", ["m2", "mm"], ["v"]), helper.make_node("Max", ["v", "zero"], ["vg"]),
             helper.make_node("Add", ["vg", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n"]), helper.make_node("Mul", ["n", "w"], ["nw"]),
             helper.make_node("Add", ["nw", "b"], ["y0"]), helper.make_node("Relu", ["y0"], ["y"])]
    return build(nodes, {"eps": np.array(1e-5, np.float32), "zero": np.array(0.0, np.float32), "w": W[-1], "b": B[-1]})


def x():
    return (RNG.normal(size=(3, 2, 5)) + 0.5).astype(np.float32)


@pytest.mark.parametrize("proto", [keras(), keras(bias=False), keras(scale=False), keras(param_shape=(1, 1, 5)), jax()],
                         ids=["keras", "keras_no_beta", "keras_no_gamma", "keras_sequence", "jax"])
def test_exporter_spellings_fuse(proto):
    fused = check_pass(fuse_layernorm, proto, x())
    assert ops(fused) == ["LayerNormalization", "Relu"]


def test_a_scale_of_higher_rank_than_x_is_not_a_trailing_constant():
    """gamma (1, 1, 1, 5) on x (N, 2, 5) would broadcast the output to rank 4: not a LayerNorm
    of x; (1, 1, 5) is (5,), and so is (1, 5) when x's rank is unknown."""
    w = W[-1]
    np.testing.assert_array_equal(trailing_constant(w.reshape(1, 1, 5), (5,), rank=3), w)
    np.testing.assert_array_equal(trailing_constant(w.reshape(1, 5), (5,)), w)
    assert trailing_constant(w.reshape(1, 1, 1, 5), (5,), rank=3) is None
    assert trailing_constant(w.reshape(1, 1, 5), (5,)) is None


def test_a_keras_form_whose_shift_is_used_elsewhere_is_not_fused():
    proto = keras()
    proto.graph.node[-1].CopyFrom(helper.make_node("Add", ["y0", "mr"], ["y"]))
    check_pass(fuse_layernorm, proto, x(), expect_changed=False)


def test_the_tolerance_rejects_the_keras_form_without_its_shift():
    proto, data = keras(bias=False), x()
    wrong = keras(bias=False)
    wrong.graph.node[-2].CopyFrom(helper.make_node("Add", ["xr", "zero_shift"], ["y0"]))
    wrong.graph.initializer.append(helper.make_tensor("zero_shift", 1, [1], [0.0]))
    want, got = run(proto, data)[0], run(wrong, data)[0]
    assert np.abs(got - want).max() > 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("spelling", ["keras", "jax"])
def test_relevance_is_the_same_as_for_the_fused_node(spelling):
    proto = keras() if spelling == "keras" else jax()
    eps = 1e-3 if spelling == "keras" else 1e-5
    fused = build([helper.make_node("LayerNormalization", ["x", "w", "b"], ["y0"], axis=-1, epsilon=eps),
                   helper.make_node("Relu", ["y0"], ["y"])], {"w": W[-1], "b": B[-1]})
    data, mask = x(), np.ones((3, 2, 5), np.float32)
    want = lrp_onnx.Explainer(fused, "attnlrp").explain(data, target=mask).relevance
    got = lrp_onnx.Explainer(proto, "attnlrp").explain(data, target=mask).relevance
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
