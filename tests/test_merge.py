"""Ops that merge or split branches (lrp_onnx/ops/merge.py Concat, and with it the residual Add,
Split and Slice of ops/arithmetic.py and ops/slicing.py): Concat against numpy, and
conservation of relevance through all of them (issue 3, item c).

Conservation: with LRP-0 and zero biases (the models' biases are zero and the rule is
``LRP0(zero_bias=True)``, as test_rules.py's conservation test) every Gemm/Conv/pooling/ReduceMean
layer maps sum R_out to sum R_in up to its stabilizer (z / (z + 1e-9 sgn z)), ReLUs pass R, Add
splits R in proportion to its summands (up to SUM_EPSILON = 1e-6 on the sum), Concat/Split/Slice
move it. So the relevance summed over every cut of the graph (a tensor all relevance passes
through, or the parallel tensors of the branches between a split and a merge) equals the
relevance put on the output, ``res.total``.
Tolerance: |sum R - total| <= 1e-5 * sum|R| per sample. The stabilizers change each share by
eps/|z| (1e-9 and 1e-6 against |z| ~ 0.1-10: < 1e-5 relative) and float32 sums of a few hundred
mixed-sign terms are off by ~1e-7 of sum|R|. The same networks with nonzero biases and plain
LRP-0 miss conservation by more than 1e-3 (checked, so the test can fail).

(Nonzero model biases with ``LRP0(zero_bias=True)`` do not conserve: a ReLU unit whose inputs
are all zero outputs its bias and its relevance has nowhere to go, and |z - b| << |b| makes
huge cancelling shares.)
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx.errors import ModelError
from lrp_onnx.rules import LRP0

BIG = np.iinfo(np.int64).max
CONSERVING = Composite(((Family("all"), LRP0(zero_bias=True)), (Family("sum"), LRP0())), "winner", "lrp0_zero_bias")
WITH_BIAS = Composite(((Family("all"), LRP0()),), "winner", "lrp0")
CONSERVATION_TOL = 1e-5


def make_model(nodes, x_shape, y_shape, params: Dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in params.items()]
    graph = helper.make_graph(list(nodes), "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# --------------------------------------------------------------------------- Concat


def test_concat_splits_relevance_back():
    """x (N,2,3) -> Concat(x, Relu(x), x; axis -1) -> y (N,2,9): R = y * mask;
    R_x = R[..., 0:3] + R[..., 3:6] (through the Relu, which passes it) + R[..., 6:9]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Concat", ["x", "r", "x"], ["y"], name="cat", axis=-1)]
    model = make_model(nodes, (2, 3), (2, 9), {})
    x = rng.normal(size=(3, 2, 3)).astype(np.float32)
    mask = rng.normal(size=(3, 2, 9))
    res = lrp_onnx.Explainer(model, WITH_BIAS).explain(x, target=mask.astype(np.float32), layers=("r",))
    xs = x.astype(np.float64)
    r = np.concatenate([xs, np.maximum(xs, 0), xs], axis=-1) * mask
    np.testing.assert_allclose(res.layers["r"], r[..., 3:6], rtol=1e-6)
    np.testing.assert_allclose(res.relevance, r[..., 0:3] + r[..., 3:6] + r[..., 6:9], rtol=1e-5, atol=1e-6)


def test_concat_of_unequal_parts_on_channels():
    """Concat of a 1-channel and a 3-channel slice of x on axis 1, in swapped order: each part's
    relevance lands on the elements it came from."""
    rng = np.random.default_rng(1)
    params = {"s0": np.array([0], np.int64), "e0": np.array([1], np.int64), "s1": np.array([1], np.int64),
              "e1": np.array([BIG], np.int64), "ax": np.array([1], np.int64)}
    nodes = [helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["a"], name="sa"),
             helper.make_node("Slice", ["x", "s1", "e1", "ax"], ["b"], name="sb"),
             helper.make_node("Concat", ["b", "a"], ["y"], name="cat", axis=1)]
    model = make_model(nodes, (4, 2), (4, 2), params)
    x = rng.normal(size=(2, 4, 2)).astype(np.float32)
    mask = rng.normal(size=(2, 4, 2))
    res = lrp_onnx.Explainer(model, WITH_BIAS).explain(x, target=mask.astype(np.float32))
    r = np.concatenate([x[:, 1:], x[:, :1]], axis=1).astype(np.float64) * mask
    np.testing.assert_allclose(res.relevance, np.concatenate([r[:, 3:], r[:, :3]], axis=1), rtol=1e-6)


def test_concat_on_the_batch_axis_is_an_error():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Concat", ["x", "r"], ["y"], name="batch_cat", axis=0)]
    model = make_model(nodes, (3,), (3,), {})
    with pytest.raises(ModelError, match=r"Concat 'batch_cat' joins along axis 0"):
        lrp_onnx.Explainer(model, WITH_BIAS)


# --------------------------------------------------------------------------- conservation networks


class Net:
    """Collects nodes and parameters; biases are N(0, 0.3) * bias_scale."""

    def __init__(self, rng, bias_scale: float):
        self.rng, self.bias_scale = rng, bias_scale
        self.nodes: List[onnx.NodeProto] = []
        self.params: Dict[str, np.ndarray] = {}

    def const(self, name, values):
        self.params[name] = np.array(values, np.int64)
        return name

    def node(self, op, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op, list(inputs), [out] if isinstance(out, str) else list(out),
                                           name=out if isinstance(out, str) else out[0], **attrs))

    def conv(self, inp, out, c_in, c_out, k=3, pad=1):
        self.params[out + "_W"] = self.rng.normal(scale=1 / np.sqrt(c_in * k * k), size=(c_out, c_in, k, k))
        self.params[out + "_b"] = self.rng.normal(scale=0.3, size=(c_out,)) * self.bias_scale
        self.node("Conv", [inp, out + "_W", out + "_b"], out, kernel_shape=[k, k], pads=[pad] * 4)

    def gemm(self, inp, out, k, n):
        self.params[out + "_W"] = self.rng.normal(scale=1 / np.sqrt(k), size=(n, k))
        self.params[out + "_b"] = self.rng.normal(scale=0.3, size=(n,)) * self.bias_scale
        self.node("Gemm", [inp, out + "_W", out + "_b"], out, transB=1)

    def model(self, x_shape, y_shape, opset=17):
        return make_model(self.nodes, x_shape, y_shape, self.params, opset)


def residual_mlp(net: Net):
    """x (N,6) -> Gemm -> Relu h -> Gemm r -> Add(h, r) -> Relu -> Gemm -> y (N,4)."""
    net.gemm("x", "z1", 6, 8)
    net.node("Relu", ["z1"], "h")
    net.gemm("h", "r", 8, 8)
    net.node("Add", ["h", "r"], "s")
    net.node("Relu", ["s"], "a")
    net.gemm("a", "y", 8, 4)
    return net.model((6,), (4,)), (6,), [("a",), ("s",), ("h",), ("z1",)]


def residual_cnn(net: Net):
    """x (N,2,5,5) -> Conv -> Relu a -> Conv c -> Add(c, a) -> Relu -> ReduceMean(2,3; keepdims 0)
    -> Gemm -> y (opset 18)."""
    net.conv("x", "z1", 2, 4)
    net.node("Relu", ["z1"], "a")
    net.conv("a", "c", 4, 4)
    net.node("Add", ["c", "a"], "s")
    net.node("Relu", ["s"], "t")
    net.node("ReduceMean", ["t", net.const("axes", [2, 3])], "m", keepdims=0)
    net.gemm("m", "y", 4, 3)
    return net.model((2, 5, 5), (3,), opset=18), (2, 5, 5), [("m",), ("t",), ("s",), ("a",), ("z1",)]


def split_concat_cnn(net: Net):
    """x (N,3,6,6) -> Conv -> Relu -> Split(axis 1, [1, 3]) -> p, q -> Conv 3x3 / Conv 1x1 -> Relu
    -> Concat(q', p') -> Slice keeping everything (channels 0:BIG) -> AveragePool 2x2 -> Flatten -> Gemm."""
    net.conv("x", "z1", 3, 4)
    net.node("Relu", ["z1"], "a")
    net.node("Split", ["a", net.const("sizes", [1, 3])], ["p", "q"], axis=1)
    net.conv("p", "zp", 1, 2)
    net.node("Relu", ["zp"], "p2")
    net.conv("q", "zq", 3, 3, k=1, pad=0)
    net.node("Relu", ["zq"], "q2")
    net.node("Concat", ["q2", "p2"], "cat", axis=1)
    net.node("Slice", ["cat", net.const("s", [0]), net.const("e", [BIG]), net.const("ax", [1])], "all")
    net.node("AveragePool", ["all"], "pool", kernel_shape=[2, 2], strides=[2, 2])
    net.node("Flatten", ["pool"], "f")
    net.gemm("f", "y", 5 * 3 * 3, 3)
    cuts = [("f",), ("pool",), ("all",), ("cat",), ("p2", "q2"), ("zp", "zq"), ("p", "q"), ("a",), ("z1",)]
    return net.model((3, 6, 6), (3,)), (3, 6, 6), cuts


def sliced_residual_mlp(net: Net):
    """x (N,8) -> Gemm -> Relu h (N,10) -> Add(h[:, 2:], h[:, :8]) -> Relu -> Gemm -> y: two
    overlapping slices of one tensor, summed (fan-in at h)."""
    net.gemm("x", "z1", 8, 10)
    net.node("Relu", ["z1"], "h")
    ax = net.const("ax", [1])
    net.node("Slice", ["h", net.const("s1", [2]), net.const("e1", [BIG]), ax], "u")
    net.node("Slice", ["h", net.const("s2", [0]), net.const("e2", [8]), ax], "v")
    net.node("Add", ["u", "v"], "s")
    net.node("Relu", ["s"], "a")
    net.gemm("a", "y", 8, 3)
    return net.model((8,), (3,)), (8,), [("a",), ("s",), ("u", "v"), ("h",), ("z1",)]


NETWORKS = {"residual_mlp": residual_mlp, "residual_cnn": residual_cnn, "split_concat_cnn": split_concat_cnn,
            "sliced_residual_mlp": sliced_residual_mlp}


@pytest.mark.parametrize("network", list(NETWORKS))
def test_lrp0_with_zero_biases_conserves_relevance_at_every_cut(network):
    """sum R over every cut (and the input) = res.total, per sample; res.conservation = 1."""
    seed = list(NETWORKS).index(network)
    model, x_shape, cuts = NETWORKS[network](Net(np.random.default_rng(seed), bias_scale=0.0))
    x = np.random.default_rng(100 + seed).normal(size=(3, *x_shape)).astype(np.float32)
    ex = lrp_onnx.Explainer(model, CONSERVING)
    assert LRP0(zero_bias=True) in ex.rules.values()
    assert set(ex.rules.values()) <= {LRP0(zero_bias=True), LRP0()}   # layers; sums (if any) split exactly
    names = sorted({t for cut in cuts for t in cut})
    res = ex.explain(x, layers=names)
    assert np.all(np.abs(res.total) > 1e-2), "explained outputs should not be ~0"
    for cut in cuts + [("<input>",)]:
        parts = [res.relevance if t == "<input>" else res.layers[t] for t in cut]
        sums = sum(r.reshape(len(x), -1).sum(axis=1, dtype=np.float64) for r in parts)
        scale = sum(np.abs(r).reshape(len(x), -1).sum(axis=1, dtype=np.float64) for r in parts)
        assert np.all(scale > 0), f"no relevance at {cut}"
        np.testing.assert_array_less(np.abs(sums - res.total), CONSERVATION_TOL * scale,
                                     err_msg=f"relevance not conserved over {cut}")
    scale = np.abs(res.relevance).reshape(len(x), -1).sum(axis=1) / np.abs(res.total)
    np.testing.assert_array_less(np.abs(res.conservation - 1.0), CONSERVATION_TOL * scale)

    # with nonzero biases and plain LRP-0 the biases keep a share: the check above can fail
    biased, _, _ = NETWORKS[network](Net(np.random.default_rng(seed), bias_scale=1.0))
    kept = lrp_onnx.Explainer(biased, WITH_BIAS).explain(x)
    assert np.abs(kept.conservation - 1.0).max() > 1e-3
