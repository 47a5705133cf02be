"""lrp_onnx/ops/arithmetic.py against dense numpy formulas written here.

Sums (Add, Sub, Sum) split the relevance R = y * mask of their output y in proportion to each
summand:  R_i = (+-x_i) / stab(y) * R,  stab(y) = y + 1e-6 sgn(y) (SUM_EPSILON, sgn(0) = +1),
summed back over broadcast axes; a constant summand (a bias) keeps its share. Mul/Div by a
constant and products with a gate (Sigmoid/HardSigmoid/Erf/Tanh output, possibly shifted or
scaled by constants) give R_x = R (unbroadcast), the gate nothing.

The summands are picked out of the one data input x by constant Slice nodes (an exact scatter
back, tests/test_slicing.py), so the test controls their values: every summand is +-U(lo, hi)
with scales chosen so that |y| >= 0.1 everywhere. Then float32 rounding of y (about 1e-7 of
|x_i|) moves R_i by at most ~1e-6 relative, far inside the tolerance.

Tolerance: float32 engine against a float64 oracle: rtol 1e-4, atol 1e-5 * max|oracle| (one
op, <= 3 summands, |y| >= 0.1: a few roundings of 2^-24 amplified by |x_i| / |y| <= 20 give
< 1e-5; an a-priori bound, tests/tolerances.py). The stabilizer with the wrong sign fails it
(test_the_tolerance_rejects_a_wrong_stabilizer_sign).
"""
from __future__ import annotations


import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx.errors import ModelError
from lrp_onnx.ops.arithmetic import SUM_EPSILON

from handler_models import BIG, LRP0_ALL, make_model  # noqa: E402

RTOL, ATOL_SCALE = 1e-4, 1e-5


def slice_node(name: str, starts, ends, axes, params: dict):
    """A constant Slice x[starts:ends] on ``axes`` producing ``name`` (constants added to params)."""
    for key, value in (("starts", starts), ("ends", ends), ("axes", axes)):
        params[f"{name}_{key}"] = np.array(value, np.int64)
    return helper.make_node("Slice", ["x", f"{name}_starts", f"{name}_ends", f"{name}_axes"], [name], name=f"slice_{name}")


def signed_uniform(rng, shape, low=0.5, high=1.5) -> np.ndarray:
    """+-U(low, high): values bounded away from zero with random signs."""
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)).astype(np.float32)


def stab(y):
    return y + SUM_EPSILON * np.where(y >= 0, 1.0, -1.0)


def assert_close(actual, reference, what=""):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    scale = float(np.abs(reference).max()) or 1.0
    np.testing.assert_allclose(actual, reference, rtol=RTOL, atol=ATOL_SCALE * scale, err_msg=what)


def explain(model, x, mask, layers=(), composite=LRP0_ALL):
    return lrp_onnx.Explainer(model, composite).explain(x, target=mask.astype(np.float32), layers=layers)


# --------------------------------------------------------------------------- sums


def test_add_of_two_activations_with_broadcasting():
    """a (N,C,H,W) + b (N,C,1,1), both sliced out of x (N,C,H,W+1):
    R_a = a / stab(y) R,  R_b = sum_hw b / stab(y) R; scattered back into x."""
    rng = np.random.default_rng(0)
    n, c, h, w = 2, 3, 4, 5
    x = np.zeros((n, c, h, w + 1), np.float32)
    x[..., :w] = signed_uniform(rng, (n, c, h, w), 1.0, 2.0)
    x[:, :, 0, w] = signed_uniform(rng, (n, c), 0.3, 0.8)      # |y| >= 1 - 0.8 = 0.2
    params = {}
    nodes = [slice_node("a", [0], [w], [3], params), slice_node("b", [0, w], [1, w + 1], [2, 3], params),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = make_model(nodes, (c, h, w + 1), (c, h, w), params)
    mask = rng.normal(size=(n, c, h, w))
    res = explain(model, x, mask, layers=("a", "b"))

    a, b = x[..., :w].astype(np.float64), x[:, :, 0:1, w:w + 1].astype(np.float64)
    y = a + b
    r = y * mask
    r_a = a / stab(y) * r
    r_b = (b / stab(y) * r).sum(axis=(2, 3), keepdims=True)
    expected = np.zeros(x.shape)
    expected[..., :w] = r_a
    expected[:, :, 0:1, w:w + 1] = r_b
    assert_close(res.layers["a"], r_a, "R_a")
    assert_close(res.layers["b"], r_b, "R_b")
    assert_close(res.relevance, expected, "R_x")
    np.testing.assert_allclose(res.relevance.sum(axis=(1, 2, 3)), r.sum(axis=(1, 2, 3)), rtol=1e-4)   # no constant: conserved


def test_add_broadcast_over_channels_and_leading_axes():
    """a (N,1,H,W) + b (N,C,H,W): a's share is summed over the C copies; b as usual."""
    rng = np.random.default_rng(1)
    n, c, h, w = 2, 3, 2, 3
    x = np.zeros((n, c + 1, h, w), np.float32)
    x[:, 0] = signed_uniform(rng, (n, h, w), 1.0, 2.0)
    x[:, 1:] = signed_uniform(rng, (n, c, h, w), 0.2, 0.7)
    params = {}
    nodes = [slice_node("a", [0], [1], [1], params), slice_node("b", [1], [BIG], [1], params),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = make_model(nodes, (c + 1, h, w), (c, h, w), params)
    mask = rng.normal(size=(n, c, h, w))
    res = explain(model, x, mask)
    a, b = x[:, 0:1].astype(np.float64), x[:, 1:].astype(np.float64)
    y = a + b
    r = y * mask
    expected = np.concatenate([(a / stab(y) * r).sum(axis=1, keepdims=True), b / stab(y) * r], axis=1)
    assert_close(res.relevance, expected)


def test_sub_of_two_activations():
    """y = a - b: R_a = a / stab(y) R, R_b = -b / stab(y) R."""
    rng = np.random.default_rng(2)
    n, d = 3, 6
    x = np.concatenate([signed_uniform(rng, (n, 1, d), 1.0, 2.0), signed_uniform(rng, (n, 1, d), 0.2, 0.8)], axis=1)
    params = {}
    nodes = [slice_node("a", [0], [1], [1], params), slice_node("b", [1], [2], [1], params),
             helper.make_node("Sub", ["a", "b"], ["y"], name="sub")]
    model = make_model(nodes, (2, d), (1, d), params)
    mask = rng.normal(size=(n, 1, d))
    res = explain(model, x, mask)
    a, b = x[:, 0:1].astype(np.float64), x[:, 1:2].astype(np.float64)
    y = a - b
    r = y * mask
    assert_close(res.relevance, np.concatenate([a / stab(y) * r, -b / stab(y) * r], axis=1))


def test_sum_of_three_with_a_broadcast_summand():
    """Sum(a (N,1,D), b (N,1,D), c (N,1,1)): R_i = x_i / stab(a + b + c) R, c's summed over D."""
    rng = np.random.default_rng(3)
    n, d = 2, 5
    x = np.zeros((n, 3, d + 1), np.float32)
    x[:, 0, :d] = signed_uniform(rng, (n, d), 1.0, 2.0)
    x[:, 1, :d] = signed_uniform(rng, (n, d), 0.2, 0.45)
    x[:, 2, d] = signed_uniform(rng, (n,), 0.2, 0.3)            # |y| >= 1 - 0.45 - 0.3 = 0.25
    params = {}
    nodes = [slice_node("a", [0, 0], [1, d], [1, 2], params), slice_node("b", [1, 0], [2, d], [1, 2], params),
             slice_node("c", [2, d], [3, d + 1], [1, 2], params),
             helper.make_node("Sum", ["a", "b", "c"], ["y"], name="sum")]
    model = make_model(nodes, (3, d + 1), (1, d), params)
    mask = rng.normal(size=(n, 1, d))
    res = explain(model, x, mask, layers=("a", "b", "c"))
    a, b, c = x[:, 0:1, :d].astype(np.float64), x[:, 1:2, :d].astype(np.float64), x[:, 2:3, d:].astype(np.float64)
    y = a + b + c
    r = y * mask
    assert_close(res.layers["a"], a / stab(y) * r, "R_a")
    assert_close(res.layers["b"], b / stab(y) * r, "R_b")
    assert_close(res.layers["c"], (c / stab(y) * r).sum(axis=2, keepdims=True), "R_c")
    np.testing.assert_allclose(res.relevance.sum(axis=(1, 2)), r.sum(axis=(1, 2)), rtol=1e-4)


@pytest.mark.parametrize("op,const_first", [("Add", False), ("Add", True), ("Sub", False), ("Sub", True)])
def test_add_or_sub_of_a_constant_bias(op, const_first):
    """y = x +- b with a constant per-channel b (C,1,1): R_x = (+-)x / stab(y) R; the bias keeps
    b / stab(y) R (absorbed), so sum R_x = sum R - sum(b-share)."""
    rng = np.random.default_rng(4)
    n, c, h, w = 2, 3, 2, 2
    x = signed_uniform(rng, (n, c, h, w), 1.0, 2.0)
    bias = rng.uniform(-0.5, 0.5, size=(c, 1, 1)).astype(np.float32)   # |y| >= 0.5
    inputs = ["b", "x"] if const_first else ["x", "b"]
    model = make_model([helper.make_node(op, inputs, ["y"], name="bias")], (c, h, w), (c, h, w), {"b": bias})
    mask = rng.normal(size=(n, c, h, w))
    res = explain(model, x, mask)
    xs, bs = x.astype(np.float64), bias.astype(np.float64)
    first, second = (bs, xs) if const_first else (xs, bs)
    y = first + second if op == "Add" else first - second
    x_sign = -1.0 if (op == "Sub" and const_first) else 1.0
    expected = x_sign * xs / stab(y) * (y * mask)
    assert_close(res.relevance, expected)
    assert not np.allclose(res.relevance.sum(axis=(1, 2, 3)), (y * mask).sum(axis=(1, 2, 3)), rtol=1e-3), \
        "the bias's share should be absorbed, not handed to x"


def test_add_of_a_constant_that_broadcasts_x():
    """x (N,1,H,W) + b (C,1,1) -> y (N,C,H,W): R_x = sum_c x / stab(y_c) R_c."""
    rng = np.random.default_rng(11)
    x = signed_uniform(rng, (2, 1, 2, 3), 1.0, 2.0)
    bias = rng.uniform(-0.5, 0.5, size=(4, 1, 1)).astype(np.float32)
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"], name="bias")], (1, 2, 3), (4, 2, 3), {"b": bias})
    mask = rng.normal(size=(2, 4, 2, 3))
    res = explain(model, x, mask)
    xs = x.astype(np.float64)
    y = xs + bias
    assert_close(res.relevance, (xs / stab(y) * (y * mask)).sum(axis=1, keepdims=True))


def test_add_of_x_to_itself():
    """y = x + x: both shares go to x: R_x = 2 x / stab(2x) R (= R up to the stabilizer)."""
    rng = np.random.default_rng(5)
    x = signed_uniform(rng, (3, 7))
    model = make_model([helper.make_node("Add", ["x", "x"], ["y"], name="double")], (7,), (7,), {})
    mask = rng.normal(size=(3, 7))
    res = explain(model, x, mask)
    xs = x.astype(np.float64)
    y = 2 * xs
    assert_close(res.relevance, 2 * xs / stab(y) * (y * mask))


def test_the_tolerance_rejects_a_wrong_stabilizer_sign():
    """At y = -1e-3 an oracle with stab(y) = y + 1e-6 (the wrong sign) moves the shares by 2e-3
    relative: assert_close fails."""
    params = {}
    nodes = [slice_node("a", [0], [2], [1], params), slice_node("b", [2], [4], [1], params),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = make_model(nodes, (4,), (2,), params)
    data = np.array([[1.0, -1e-3 - 0.25, -1.0, 0.25]], np.float32)   # y = [0, -1e-3]
    res = explain(model, data, np.ones((1, 2)))
    a, b = data[:, :2].astype(np.float64), data[:, 2:].astype(np.float64)
    y = (data[:, :2] + data[:, 2:]).astype(np.float64)
    wrong = np.concatenate([a / (y + SUM_EPSILON) * y, b / (y + SUM_EPSILON) * y], axis=1)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_close(res.relevance, wrong)


def test_sum_stabilizer_sign_convention():
    """y = a + b with a = [1, -0.251], b = [-1, 0.25]: y = [0, -1e-3]. At y = 0, stab(0) = +1e-6
    and R = y * mask = 0, so R_i = 0 (no NaN); at y = -1e-3 the stabilizer must take y's sign
    (-1e-6: with +1e-6 the shares would move by 2e-3 relative, 20x the tolerance)."""
    params = {}
    nodes = [slice_node("a", [0], [2], [1], params), slice_node("b", [2], [4], [1], params),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = make_model(nodes, (4,), (2,), params)
    x = np.array([[1.0, -1e-3 - 0.25, 0.5, -0.501]], np.float32)   # y = [1.5, -0.752]
    x2 = np.array([[1.0, -1e-3 - 0.25, -1.0, 0.25]], np.float32)   # y = [0, -1e-3]
    mask = np.ones((1, 2))
    for data in (x, x2):
        res = explain(model, data, mask)
        a, b = data[:, :2].astype(np.float64), data[:, 2:].astype(np.float64)
        y = (data[:, :2] + data[:, 2:]).astype(np.float64)   # the float32 sum, as the engine sees it
        r = y * mask
        expected = np.concatenate([a / stab(y) * r, b / stab(y) * r], axis=1)
        assert np.all(np.isfinite(res.relevance))
        assert_close(res.relevance, expected)


# --------------------------------------------------------------------------- scaling


@pytest.mark.parametrize("op,const_first,c_shape", [
    ("Mul", False, (3, 1, 1)), ("Mul", True, (3, 1, 1)), ("Div", False, (3, 1, 1)), ("Mul", False, ()),
    ("Div", False, (1, 3, 1, 1)),
])
def test_mul_or_div_by_a_constant_passes(op, const_first, c_shape):
    """y = x * c or x / c: R_x = R = y * mask."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    const = signed_uniform(rng, c_shape)
    inputs = ["c", "x"] if const_first else ["x", "c"]
    model = make_model([helper.make_node(op, inputs, ["y"], name="scale")], (3, 2, 2), (3, 2, 2), {"c": np.asarray(const)})
    mask = rng.normal(size=(2, 3, 2, 2))
    y = x.astype(np.float64) * const if op == "Mul" else x.astype(np.float64) / const
    assert_close(explain(model, x, mask).relevance, y * mask)


def test_mul_by_a_constant_that_broadcasts_x():
    """x (N,1,H,W) * c (1,C,1,1) -> (N,C,H,W): R_x = sum_c R[:, c]."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 1, 2, 3)).astype(np.float32)
    const = signed_uniform(rng, (1, 4, 1, 1))
    model = make_model([helper.make_node("Mul", ["x", "c"], ["y"], name="scale")], (1, 2, 3), (4, 2, 3), {"c": const})
    mask = rng.normal(size=(2, 4, 2, 3))
    y = x.astype(np.float64) * const
    assert_close(explain(model, x, mask).relevance, (y * mask).sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------- gates


def _gate_nodes(kind: str, src: str, out: str, params: dict):
    """Nodes computing a gate from ``src``: a gate op, or one followed by constant arithmetic."""
    if kind in ("Sigmoid", "Tanh"):
        return [helper.make_node(kind, [src], [out], name=f"gate_{out}")]
    if kind == "HardSigmoid":
        return [helper.make_node(kind, [src], [out], name=f"gate_{out}", alpha=0.2, beta=0.5)]
    if kind == "OneMinusSigmoid":      # 1 - sigmoid: still a gate
        params["one"] = np.array(1.0, np.float32)
        return [helper.make_node("Sigmoid", [src], [out + "_s"], name=f"gate_{out}"),
                helper.make_node("Sub", ["one", out + "_s"], [out], name=f"gate_{out}_sub")]
    if kind == "HalfOnePlusTanh":      # 0.5 * (1 + tanh)
        params["one"], params["half"] = np.array(1.0, np.float32), np.array(0.5, np.float32)
        return [helper.make_node("Tanh", [src], [out + "_t"], name=f"gate_{out}"),
                helper.make_node("Add", [out + "_t", "one"], [out + "_p"], name=f"gate_{out}_add"),
                helper.make_node("Mul", ["half", out + "_p"], [out], name=f"gate_{out}_mul")]
    raise AssertionError(kind)


def _gate_value(kind: str, v: np.ndarray) -> np.ndarray:
    sig = 1 / (1 + np.exp(-v))
    return {"Sigmoid": sig, "Tanh": np.tanh(v), "HardSigmoid": np.clip(0.2 * v + 0.5, 0, 1),
            "OneMinusSigmoid": 1 - sig, "HalfOnePlusTanh": 0.5 * (1 + np.tanh(v))}[kind]


@pytest.mark.parametrize("gate_first", [False, True])
@pytest.mark.parametrize("kind", ["Sigmoid", "HardSigmoid", "Tanh", "OneMinusSigmoid", "HalfOnePlusTanh"])
def test_squeeze_excitation_gate_gets_no_relevance(kind, gate_first):
    """y = Relu(x) * gate(Conv1x1(GlobalAveragePool(Relu(x)))): R_relu = R = y * mask, all of it
    to the signal; the gate branch (GAP, Conv) gets none (its relevance is exactly zero)."""
    rng = np.random.default_rng(8)
    n, c, h, w = 2, 4, 3, 3
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    wc = rng.normal(size=(c, c, 1, 1)).astype(np.float32)
    bc = rng.normal(size=(c,)).astype(np.float32)
    params = {"W": wc, "B": bc}
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             helper.make_node("Conv", ["g", "W", "B"], ["h"], name="fc", kernel_shape=[1, 1])]
    nodes += _gate_nodes(kind, "h", "s", params)
    nodes.append(helper.make_node("Mul", ["s", "a"] if gate_first else ["a", "s"], ["y"], name="excite"))
    model = make_model(nodes, (c, h, w), (c, h, w), params)
    mask = rng.normal(size=(n, c, h, w))
    res = explain(model, x, mask, layers=("a", "g", "h"))

    a = np.maximum(x.astype(np.float64), 0)
    hv = np.einsum("ncij,mc->nmij", a.mean(axis=(2, 3), keepdims=True), wc[:, :, 0, 0]) + bc.reshape(1, c, 1, 1)
    y = a * _gate_value(kind, hv)
    assert_close(res.output, y, "forward")
    assert_close(res.layers["a"], y * mask, "R at the signal")
    assert_close(res.relevance, y * mask, "R_x")
    assert np.all(res.layers["g"] == 0) and np.all(res.layers["h"] == 0)


@pytest.mark.parametrize("gate_first", [False, True])
def test_silu(gate_first):
    """SiLU y = x * Sigmoid(x): R_x = R = y * mask."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Mul", ["s", "x"] if gate_first else ["x", "s"], ["y"], name="silu")]
    model = make_model(nodes, (6,), (6,), {})
    mask = rng.normal(size=(3, 6))
    xs = x.astype(np.float64)
    assert_close(explain(model, x, mask).relevance, xs / (1 + np.exp(-xs)) * mask)


@pytest.mark.parametrize("x_first", [True, False])
def test_gelu_as_torch_exports_it(x_first):
    """torch's GELU export: Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5, behind a Gemm.
    All relevance goes to the signal: R at the Gemm output = y * mask; R_x is LRP-0 of the
    Gemm (dense formula: R_x = x * ((R / stab(z)) @ W), stab(z) = z + 1e-9 sgn(z))."""
    from math import erf, sqrt
    rng = np.random.default_rng(10)
    wg = rng.normal(size=(5, 4)).astype(np.float32)
    params = {"W": wg, "sqrt2": np.array(sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
              "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W"], ["z"], name="fc", transB=1),
             helper.make_node("Div", ["z", "sqrt2"], ["d"], name="div"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["f"], name="add1"),
             helper.make_node("Mul", ["z", "f"] if x_first else ["f", "z"], ["g"], name="mul_x"),
             helper.make_node("Mul", ["g", "half"], ["y"], name="mul_half")]
    model = make_model(nodes, (4,), (5,), params)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    mask = rng.normal(size=(3, 5))
    res = explain(model, x, mask, layers=("z", "d"))
    xs = x.astype(np.float64)
    z = xs @ wg.T.astype(np.float64)
    y = 0.5 * z * (1 + np.vectorize(erf)(z / sqrt(2.0)))
    r = y * mask
    assert_close(res.layers["z"], r, "R at the GELU input")
    assert np.all(res.layers["d"] == 0)
    assert_close(res.relevance, xs * ((r / (z + 1e-9 * np.where(z >= 0, 1, -1))) @ wg.astype(np.float64)), "R_x")


# --------------------------------------------------------------------------- errors


def _error_model(nodes, shape=(4,)):
    return make_model(nodes, shape, shape, {"c": np.array(2.0, np.float32)})


@pytest.mark.parametrize("nodes,message", [
    ([helper.make_node("Sigmoid", ["x"], ["a"], name="s1"), helper.make_node("Tanh", ["x"], ["b"], name="t1"),
      helper.make_node("Mul", ["a", "b"], ["y"], name="prod")],
     r"Mul 'prod' multiplies two gates \('a', 'b'.*exactly one factor is a gate"),
    ([helper.make_node("Mul", ["x", "x"], ["y"], name="square")], r"Mul 'square' squares an activation \('x'\)"),
    ([helper.make_node("Div", ["c", "x"], ["y"], name="inv")], r"Div 'inv' divides by an activation \('x'\)"),
    ([helper.make_node("Sigmoid", ["x"], ["s"], name="sig"), helper.make_node("Div", ["x", "s"], ["y"], name="ratio")],
     r"Div 'ratio' divides by an activation \('s'\)"),
])
def test_unsupported_products_are_clear_errors(nodes, message):
    with pytest.raises(ModelError, match=message):
        lrp_onnx.Explainer(_error_model(nodes), LRP0_ALL)


def test_neg_passes_relevance_and_its_gradient_is_negated():
    """y = Gemm(-x): R_x = R at the Neg's output (Llama's rotate_half); gradient: -G."""
    rng = np.random.default_rng(12)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    nodes = [helper.make_node("Neg", ["x"], ["n"], name="neg"), helper.make_node("Gemm", ["n", "W"], ["y"], name="fc", transB=1)]
    model = make_model(nodes, (4,), (3,), {"W": w})
    x = rng.normal(size=(2, 4)).astype(np.float32)
    mask = rng.normal(size=(2, 3))
    res = explain(model, x, mask, layers=("n",))
    np.testing.assert_array_equal(res.relevance, res.layers["n"])
    n = -x.astype(np.float64)
    z = n @ w.T.astype(np.float64)
    assert_close(res.relevance, n * ((z * mask / (z + 1e-9 * np.where(z >= 0, 1, -1))) @ w.astype(np.float64)))
    grad = lrp_onnx.Explainer(model, "gradient").explain(x, target=mask.astype(np.float32)).relevance
    assert_close(grad, -(mask @ w.astype(np.float64)))
