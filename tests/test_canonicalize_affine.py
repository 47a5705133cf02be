"""canonicalize/affine.py: a chain of Mul/Div/Add/Sub by constants after a Conv, Gemm or MatMul
(tf2onnx's BatchNormalization: Conv -> Mul -> Add) becomes part of the layer; onnxruntime's
outputs are unchanged, and the explainer then reads the shift as the layer's bias.

Tolerance (check_pass): 1e-5 of the output's scale. The folded layer computes
sum(x * (s w)) + (s b + t) instead of s * (sum(x w) + b) + t: a few float32 roundings more or
less per output (2^-24 = 6e-8 each) on sums of 2 * 3 * 3 = 18 products, far below 1e-5; the
deliberately wrong fold (the shift not scaled, b + t) is off by |s - 1| |b|, about 0.5 of the
scale here, and the tolerance rejects it.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.canonicalize import fold_affine
from lrp_onnx.composites import Composite, Family
from lrp_onnx.rules import Epsilon

from test_canonicalize import check_pass, model, ops, run

RNG = np.random.default_rng(3)
X4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])
Y4 = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])
SCALE = (RNG.uniform(0.5, 1.5, size=(1, 3, 1, 1)) * np.array([1, -1, 1]).reshape(1, 3, 1, 1)).astype(np.float32)
SHIFT = RNG.normal(size=(3, 1, 1)).astype(np.float32)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def conv_then(chain, consts, bias=True, extra=()):
    """x -> Conv(pads 1) -> ``chain`` (nodes reading "c" and writing "y")."""
    inits = [const("W", RNG.normal(size=(3, 2, 3, 3)))] + [const(k, v) for k, v in consts.items()]
    inputs = ["x", "W"] + (["B"] if bias else [])
    if bias:
        inits.append(const("B", RNG.normal(size=3)))
    return model([helper.make_node("Conv", inputs, ["c"], pads=[1, 1, 1, 1], name="conv")] + chain + list(extra),
                 [X4], [Y4], inits)


def x4():
    return RNG.normal(size=(2, 2, 6, 6)).astype(np.float32)


def test_tf2onnx_batchnorm_mul_add_folds_into_the_conv():
    proto = conv_then([helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])],
                      {"s": SCALE, "t": SHIFT})
    out = check_pass(fold_affine, proto, x4())
    assert ops(out) == ["Conv"] and out.graph.node[0].output[0] == "y"


@pytest.mark.parametrize("chain", [
    [("Sub", ["c", "t"]), ("Div", ["a0", "s"])],       # (y - mean) / std
    [("Mul", ["s", "c"]), ("Sub", ["t", "a0"])],       # t - s * y: a negative scale
    [("Div", ["c", "two"]), ("Add", ["t", "a0"]), ("Mul", ["a1", "s"])],
])
def test_chains_of_every_spelling_fold(chain):
    nodes = []
    for k, (op, inputs) in enumerate(chain):
        nodes.append(helper.make_node(op, inputs, ["y" if k == len(chain) - 1 else f"a{k}"]))
    out = check_pass(fold_affine, conv_then(nodes, {"s": SCALE, "t": SHIFT, "two": 2.0}, bias=False), x4())
    assert ops(out) == ["Conv"]


def test_a_matmul_keeps_one_add_and_a_3d_input_works():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 3])
    proto = model([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["g"]),
                   helper.make_node("Mul", ["g", "s"], ["y"])], [x], [y],
                  [const("W", RNG.normal(size=(4, 3))), const("b", RNG.normal(size=3)), const("s", SCALE.reshape(3))])
    out = check_pass(fold_affine, proto, RNG.normal(size=(2, 5, 4)).astype(np.float32))
    assert ops(out) == ["MatMul", "Add"]


def test_a_gemm_with_a_scalar_scale():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    proto = model([helper.make_node("Gemm", ["x", "W"], ["g"], transB=1), helper.make_node("Div", ["g", "k"], ["y"])],
                  [x], [y], [const("W", RNG.normal(size=(3, 4))), const("k", 3.0)])
    out = check_pass(fold_affine, proto, RNG.normal(size=(5, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"]


@pytest.mark.parametrize("case", ["spatial constant", "other use", "divide by the signal", "shared weight"])
def test_refusals(case):
    extra, chain = (), [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])]
    consts = {"s": SCALE, "t": SHIFT}
    if case == "spatial constant":   # varies over H and W: not one value per channel
        consts["s"] = RNG.normal(size=(1, 3, 6, 6))
    elif case == "other use":
        chain = [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    elif case == "divide by the signal":
        chain = [helper.make_node("Div", ["s", "c"], ["y"])]
    else:
        chain = chain[:1] + [helper.make_node("Conv", ["m", "W2"], ["y"], pads=[1, 1, 1, 1])]
        consts["W2"] = np.zeros((3, 3, 3, 3))
        extra = [helper.make_node("Conv", ["x", "W"], ["unused"], pads=[1, 1, 1, 1])]
    out = check_pass(fold_affine, conv_then(chain, consts, extra=extra), x4(), expect_changed=False)
    assert "Mul" in ops(out) or "Div" in ops(out)


def test_the_tolerance_rejects_a_fold_that_does_not_scale_the_bias():
    proto = conv_then([helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])],
                      {"s": SCALE, "t": SHIFT})
    wrong = onnx.ModelProto()
    wrong.CopyFrom(proto)
    init = {t.name: t for t in wrong.graph.initializer}
    w, b = (numpy_helper.to_array(init[k]) for k in ("W", "B"))
    init["W"].CopyFrom(numpy_helper.from_array(w * SCALE.reshape(3, 1, 1, 1), "W"))
    init["B"].CopyFrom(numpy_helper.from_array(b + SHIFT.reshape(3), "B"))
    del wrong.graph.node[1:]
    wrong.graph.node[0].output[0] = "y"
    x = x4()
    want, got = run(proto, x)[0], run(wrong, x)[0]
    assert np.abs(got - want).max() > 1e-5 * np.abs(want).max()


def test_the_explainer_reads_the_folded_shift_as_a_bias():
    """Relevance of the Conv -> Mul -> Add model equals that of the same function written as
    one Conv (1e-5 of max|R|: the same float32 kernels after folding, up to the roundings of
    the fold itself)."""
    proto = conv_then([helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])],
                      {"s": SCALE, "t": SHIFT})
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    folded = conv_then([helper.make_node("Identity", ["c"], ["y"])], {}, bias=True)
    for t in folded.graph.initializer:
        value = {"W": init["W"] * SCALE.reshape(3, 1, 1, 1), "B": init["B"] * SCALE.reshape(3) + SHIFT.reshape(3)}[t.name]
        t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), t.name))
    composite = Composite(((Family("all"), Epsilon()),))
    x = np.abs(x4())
    mask = np.zeros((2, 3, 6, 6), np.float32)
    mask[:, :, 2, 3] = 1
    want = lrp_onnx.Explainer(folded, composite).explain(x, target=mask).relevance
    got = lrp_onnx.Explainer(proto, composite).explain(x, target=mask).relevance
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
