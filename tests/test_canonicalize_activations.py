"""canonicalize/hardswish.py and softmax_decomposed.py: hard-swish and softmax written as
primitives become one HardSwish / Softmax node; onnxruntime's outputs are unchanged and the
relevance equals that of the model written with the fused node.

Tolerances: outputs 1e-5 of their scale (check_pass; the fused kernels round once or twice
where the primitives round three to five times, 2^-24 each); relevance 1e-5 of max|R| (both
sides run the same Gemm kernels on inputs that agree to those roundings, and an activation
passes relevance through). The deliberately wrong reading, the unfused hard-swish taken as a
product of two activations (the bilinear rule: half to each factor), differs by 0.1 of max|R|
or more, which the tolerance rejects; a softmax over the wrong axis changes the outputs by
far more than 1e-5.
"""
import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from handler_models import make_model
from lrp_onnx.canonicalize import PASSES, fuse_hardswish, fuse_softmax
from lrp_onnx.load import infer_shapes

from test_canonicalize import check_pass, ops, run

RNG = np.random.default_rng(7)
N = helper.make_node
PARAMS = {"w1": RNG.normal(size=(6, 4)), "w2": RNG.normal(size=(3, 6)), "three": np.array(3.0), "zero": np.array(0.0),
          "six": np.array(6.0), "sixth": np.array(1 / 6), "last": np.array([-1], np.int64), "first": np.array([0], np.int64)}


def net(middle, output="y"):
    """x (N, 4) -> Gemm -> ``middle`` (from "h" to "a") -> Gemm."""
    nodes = [N("Gemm", ["x", "w1"], ["h"], transB=1)] + middle + [N("Gemm", ["a", "w2"], [output], transB=1)]
    proto = make_model(nodes, (4,), (3,), PARAMS)
    infer_shapes(proto)
    return proto


def x():
    return RNG.normal(size=(5, 4)).astype(np.float32) * 2


HARDSWISH = {
    "clip_div_mul": [N("Add", ["h", "three"], ["s"]), N("Clip", ["s", "zero", "six"], ["g"]), N("Div", ["g", "six"], ["q"]),
                     N("Mul", ["h", "q"], ["a"])],
    "relu_min_mul_div": [N("Add", ["three", "h"], ["s"]), N("Relu", ["s"], ["r"]), N("Min", ["r", "six"], ["g"]),
                         N("Mul", ["h", "g"], ["p"]), N("Div", ["p", "six"], ["a"])],
    "clip_mul_sixth": [N("Add", ["h", "three"], ["s"]), N("Clip", ["s", "zero", "six"], ["g"]), N("Mul", ["g", "h"], ["p"]),
                       N("Mul", ["p", "sixth"], ["a"])],
}


@pytest.mark.parametrize("spelling", list(HARDSWISH))
def test_hardswish_spellings_fuse_and_explain_as_the_fused_node(spelling):
    data = x()
    fused = check_pass(fuse_hardswish, net(HARDSWISH[spelling]), data)
    assert ops(fused) == ["Gemm", "HardSwish", "Gemm"]
    want = lrp_onnx.Explainer(net([N("HardSwish", ["h"], ["a"])]), "epsilon_plus").explain(data, target=1).relevance
    got = lrp_onnx.Explainer(net(HARDSWISH[spelling]), "epsilon_plus").explain(data, target=1).relevance
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_a_clip_to_other_bounds_is_not_a_hardswish():
    middle = [N("Add", ["h", "three"], ["s"]), N("Clip", ["s", "zero", "three"], ["g"]), N("Div", ["g", "six"], ["q"]),
              N("Mul", ["h", "q"], ["a"])]
    check_pass(fuse_hardswish, net(middle), x(), expect_changed=False)


def test_the_tolerance_rejects_the_unfused_hardswish_read_as_a_product(monkeypatch):
    import lrp_onnx.canonicalize as canonicalize

    data = x()
    want = lrp_onnx.Explainer(net([N("HardSwish", ["h"], ["a"])]), "epsilon_plus").explain(data, target=1).relevance
    monkeypatch.setattr(canonicalize, "PASSES", tuple(p for p in PASSES if p is not fuse_hardswish))
    wrong = lrp_onnx.Explainer(net(HARDSWISH["clip_div_mul"]), "epsilon_plus").explain(data, target=1).relevance
    assert np.abs(wrong - want).max() > 0.1 * np.abs(want).max()


def softmax(stable=True, reciprocal=False, axes="last"):
    nodes, source = [], "h"
    if stable:
        nodes += [N("ReduceMax", ["h"], ["m"], axes=[-1], keepdims=1), N("Sub", ["h", "m"], ["d"])]
        source = "d"
    nodes += [N("Exp", [source], ["e"]), N("ReduceSum", ["e", axes], ["s"], keepdims=1)]
    if reciprocal:
        nodes += [N("Reciprocal", ["s"], ["r"]), N("Mul", ["e", "r"], ["a"])]
    else:
        nodes.append(N("Div", ["e", "s"], ["a"]))
    return nodes


@pytest.mark.parametrize("kw", [dict(), dict(stable=False), dict(reciprocal=True)], ids=["stable", "plain", "reciprocal"])
def test_softmax_inside_the_network_fuses_and_explains_as_the_fused_node(kw):
    data = x()
    fused = check_pass(fuse_softmax, net(softmax(**kw)), data)
    assert ops(fused) == ["Gemm", "Softmax", "Gemm"]
    want = lrp_onnx.Explainer(net([N("Softmax", ["h"], ["a"], axis=-1)]), "attnlrp").explain(data, target=1).relevance
    got = lrp_onnx.Explainer(net(softmax(**kw)), "attnlrp").explain(data, target=1).relevance
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_softmax_at_the_output_is_stripped_after_fusing():
    proto = make_model([N("Gemm", ["x", "w1"], ["h"], transB=1)] + softmax(), (4,), (6,), PARAMS, output="a")
    assert [n.op_type for n in lrp_onnx.Explainer(proto, "epsilon_plus").forward_model.graph.node] == ["Gemm"]


def test_a_sum_over_another_axis_is_not_a_softmax():
    proto = net(softmax(axes="first"))
    check_pass(fuse_softmax, proto, x(), expect_changed=False)
    data = x()
    assert np.abs(run(proto, data)[0] - run(net([N("Softmax", ["h"], ["a"], axis=-1)]), data)[0]).max() > 1e-3
