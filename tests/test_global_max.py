"""lrp_onnx/ops/global_max.py: GlobalMaxPool, ReduceMax/ReduceMin and element-wise Max/Min
against a dense numpy formula.

Models: x (N, C, H, W) -> GlobalMaxPool | ReduceMax | ReduceMin (axes (2, 3), keepdims 0 or 1)
-> Flatten -> Gemm; and x -> Max | Min (x, x * v) or (x, c) -> Flatten -> Gemm, explained with
LRP-0 and with the ``gradient`` composite. Oracle (float64): R_p, the relevance at the extreme,
is LRP-0 through one Gemm, p * w[t] (R_out = y), or the gradient w[t]; winner mode gives it to
the input positions equal to the extreme, split evenly among ties (the inputs have planted ties
for a maximum and for a minimum); avg
mode reads GlobalMaxPool as an average, R_x = x * (R_p / (H W mean)) / (H W). Tolerance: 1e-5 of
max|R| (one Gemm of at most 48 terms and one division, a few roundings of 2^-24 each, divided by
|z| > 0.1 for these positive inputs and weights). An oracle that gives the whole maximum to
each tied position (no split) is rejected by it.
"""
import numpy as np
import pytest
from onnx import helper

from handler_models import make_model
from lrp_onnx import Composite, Explainer, Family
from lrp_onnx.rules import LRP0

C, H, W, K = 4, 3, 5, 3
RNG = np.random.default_rng(2)
LRP0_ALL = {"winner": Composite(((Family("all"), LRP0()),), "winner"), "avg": Composite(((Family("all"), LRP0()),), "avg")}


def inputs():
    x = RNG.uniform(0.2, 1.0, size=(2, C, H, W))
    x[0, 1].flat[[3, 7]] = 2.0   # a tie for the maximum of sample 0, channel 1
    x[1, 2].flat[[1, 4]] = 0.1   # a tie for the minimum of sample 1, channel 2
    return x.astype(np.float32)


def pooled_model(op):
    attrs = dict(axes=[2, 3], keepdims=1) if op in ("ReduceMax", "ReduceMin") else \
        dict(axes=[-1, 2], keepdims=0) if op.endswith("_flat") else {}
    params = {"w": RNG.uniform(0.1, 1.0, size=(K, C))}
    nodes = [helper.make_node(op.split("_")[0], ["x"], ["p"], **attrs), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    return make_model(nodes, (C, H, W), (K,), params), params["w"].astype(np.float32).astype(np.float64)


def pooled_oracle(x, w, target, mode, gradient=False, split=True, extreme=np.max):
    x = x.astype(np.float64)
    pooled = extreme(x, axis=(2, 3)) if mode == "winner" else x.mean(axis=(2, 3))
    r_pool = w[target] if gradient else pooled * w[target]   # LRP-0 with R_out = z: a_j w_jk / z_k * z_k
    if mode == "avg":
        return x * (r_pool / pooled / (H * W))[:, :, None, None]
    winners = (x == extreme(x, axis=(2, 3), keepdims=True)).astype(np.float64)
    count = winners.sum(axis=(2, 3), keepdims=True) if split else 1.0
    return winners / count * r_pool[:, :, None, None]


@pytest.mark.parametrize("op, mode, composite", [
    (op, "winner", composite) for op in ("GlobalMaxPool", "ReduceMax", "ReduceMax_flat", "ReduceMin", "ReduceMin_flat")
    for composite in ("lrp0", "gradient")
] + [("GlobalMaxPool", "avg", "lrp0")])
def test_extrema_over_axes_match_the_dense_formula(op, mode, composite):
    proto, w = pooled_model(op)
    x, target = inputs(), np.array([1, 2])
    got = Explainer(proto, LRP0_ALL[mode] if composite == "lrp0" else "gradient").explain(x, target=target).relevance
    want = pooled_oracle(x, w, target, mode, gradient=composite == "gradient",
                         extreme=np.min if op.startswith("ReduceMin") else np.max)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("op", ["GlobalMaxPool", "ReduceMin"])
def test_the_tolerance_rejects_ties_that_are_not_split(op):
    proto, w = pooled_model(op)
    x, target = inputs(), np.array([1, 2])
    got = Explainer(proto, LRP0_ALL["winner"]).explain(x, target=target).relevance
    wrong = pooled_oracle(x, w, target, "winner", split=False, extreme=np.min if op == "ReduceMin" else np.max)
    assert np.abs(got - wrong).max() > 1e-5 * np.abs(wrong).max()


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("other", ["activation", "constant"])
@pytest.mark.parametrize("composite", ["lrp0", "gradient"])
def test_elementwise_extrema_match_the_dense_formula(op, other, composite):
    v = RNG.uniform(0.5, 1.5, size=(C, H, W))
    v.flat[:5] = 1.0   # x * 1 ties with x
    params = {"v": v, "c": np.array(0.6), "w": RNG.uniform(0.1, 1.0, size=(K, C * H * W))}
    second = [helper.make_node("Mul", ["x", "v"], ["xv"])] if other == "activation" else []
    nodes = second + [helper.make_node(op, ["x", "xv" if second else "c"], ["m"]), helper.make_node("Flatten", ["m"], ["f"]),
                      helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    proto = make_model(nodes, (C, H, W), (K,), params)
    x, target = inputs(), np.array([1, 2])
    got = Explainer(proto, LRP0_ALL["winner"] if composite == "lrp0" else "gradient").explain(x, target=target).relevance
    xs, w = x.astype(np.float64), params["w"].astype(np.float32).astype(np.float64)
    others = xs * v.astype(np.float32) if second else np.full_like(xs, np.float32(0.6))
    m = (np.maximum if op == "Max" else np.minimum)(xs, others)
    r_m = (w[target] if composite == "gradient" else m.reshape(2, -1) * w[target]).reshape(xs.shape)
    wins, other_wins = (xs == m).astype(float), (others == m).astype(float)
    share = r_m / (wins + other_wins)
    # through x directly, and (for the activation) through x * v: Mul by a constant passes relevance, the gradient scales
    want = wins * share + (other_wins * share * (v if composite == "gradient" else 1.0) if second else 0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
