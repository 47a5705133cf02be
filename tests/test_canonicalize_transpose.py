"""canonicalize/transpose_pairs.py: Transposes that cancel (directly or around layout-free
element-wise ops, as tf2onnx and jax2onnx write NHWC <-> NCHW) are removed, a pair that does
not cancel becomes one Transpose, and a flattening Reshape becomes Flatten; onnxruntime's
outputs are unchanged (check_pass: 1e-5 of the scale; these rewrites only move elements, so the
outputs are in fact bit-identical) and the relevance is the same as before the pass.

The deliberately wrong rewrite (a pair that does not cancel dropped as if it did) changes the
outputs by O(1) and is rejected by the same check.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.canonicalize import cancel_transposes
from lrp_onnx.composites import Composite, Family
from lrp_onnx.rules import Epsilon

from test_canonicalize import check_pass, model, ops, run

RNG = np.random.default_rng(11)
N = helper.make_node
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 3])
INITS = [numpy_helper.from_array(RNG.normal(size=(5, 24)).astype(np.float32), "W"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half"),
         numpy_helper.from_array(RNG.normal(size=(1, 4, 3, 2)).astype(np.float32), "per_element"),
         numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
         numpy_helper.from_array(np.array([-1, 24], np.int64), "flat24")]
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])


def net(middle, shape="flat"):
    """x (N, 2, 4, 3) -> ``middle`` (from "x" to "t") -> Reshape(shape) -> Gemm."""
    return model(middle + [N("Reshape", ["t", shape], ["f"]), N("Gemm", ["f", "W"], ["y"], transB=1)], [X], [Y], INITS)


def x():
    return RNG.normal(size=(3, 2, 4, 3)).astype(np.float32)


TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


@pytest.mark.parametrize("middle, left", [
    ([N("Transpose", ["x"], ["a"], perm=TO_NHWC), N("Transpose", ["a"], ["t"], perm=TO_NCHW)], []),
    ([N("Transpose", ["x"], ["a"], perm=TO_NHWC), N("Relu", ["a"], ["b"]), N("Mul", ["b", "half"], ["c"]),
      N("Transpose", ["c"], ["t"], perm=TO_NCHW)], ["Relu", "Mul"]),
    ([N("Transpose", ["x"], ["a"], perm=TO_NHWC), N("Transpose", ["a"], ["t"], perm=[0, 1, 3, 2])], ["Transpose"]),
], ids=["pair", "around_elementwise", "merged"])
def test_transposes_cancel_or_merge(middle, left):
    out = check_pass(cancel_transposes, net(middle), x())
    assert ops(out) == left + ["Flatten", "Gemm"]


def test_a_per_element_constant_between_keeps_the_transposes():
    middle = [N("Transpose", ["x"], ["a"], perm=TO_NHWC), N("Add", ["a", "per_element"], ["b"]),
              N("Transpose", ["b"], ["t"], perm=TO_NCHW)]
    out = check_pass(cancel_transposes, net(middle), x())
    assert ops(out).count("Transpose") == 2


@pytest.mark.parametrize("shape", ["flat", "flat24"])
def test_a_flattening_reshape_becomes_flatten(shape):
    out = check_pass(cancel_transposes, net([N("Relu", ["x"], ["t"])], shape), x())
    assert ops(out) == ["Relu", "Flatten", "Gemm"]


def test_the_check_rejects_a_pair_dropped_that_does_not_cancel():
    middle = [N("Transpose", ["x"], ["a"], perm=TO_NHWC), N("Transpose", ["a"], ["t"], perm=[0, 1, 3, 2])]
    proto = net(middle)
    wrong = onnx.ModelProto()
    wrong.CopyFrom(proto)
    del wrong.graph.node[:2]
    wrong.graph.node[0].input[0] = "x"
    data = x()
    want, got = run(proto, data)[0], run(wrong, data)[0]
    assert np.abs(got - want).max() > 1e-5 * np.abs(want).max()


def test_relevance_is_unchanged(monkeypatch):
    """The explainer of the model with the pair (the pass switched off) and with the pass:
    the same relevance (1e-6 of max|R|: the same kernels on the same numbers)."""
    import lrp_onnx.canonicalize as canonicalize

    middle = [N("Transpose", ["x"], ["a"], perm=TO_NHWC), N("Relu", ["a"], ["b"]), N("Transpose", ["b"], ["t"], perm=TO_NCHW)]
    composite, data = Composite(((Family("all"), Epsilon()),)), np.abs(x())
    want = lrp_onnx.Explainer(net(middle), composite).explain(data, target=2).relevance
    monkeypatch.setattr(canonicalize, "PASSES", tuple(p for p in canonicalize.PASSES if p is not cancel_transposes))
    before = lrp_onnx.Explainer(net(middle), composite).explain(data, target=2).relevance
    np.testing.assert_allclose(want, before, rtol=0, atol=1e-6 * np.abs(before).max())
