"""lrp_onnx/ops/reduce.py: ReduceMean / ReduceSum as linear layers with fixed weights.

The oracle writes the reduction of one flattened sample as a dense matrix, z = a @ M with
M[j, k] = 1/n (ReduceMean) or 1 (ReduceSum) when input element j is reduced into output
element k (built from numpy index arithmetic, independent of the engine), and applies each
rule as matrix algebra in float64:

    LRP0 / Epsilon   R_in = a * (R / incr(a M)) M^T            incr(z) = z + eps_total * sgn(z)
    ZPlus            z = a+ M + a- M, R_in = (a+ + a-) * (R / incr(z)) M^T
    Gamma            the same, in two terms masked by z > 0 and z < 0 (the output-sign masks)
                     (a layer without parameters ignores the rule's parameter modifiers;
                     README "Rules" and rules.ParamMod, the convention of zennit and the tutorial)
    Flat             R_in = (R / incr(1 M)) M^T
    eps_total = epsilon + relative * rms(z) over the sample; sgn(0) = +1; R = y * mask.

Data: per channel an offset +-1.5 plus N(0, 1) noise, so inputs have both signs but every
reduced value satisfies |z| > 0.1 (asserted): the float32 rounding of z then moves R by
< 1e-5 relative. Tolerance: rtol 1e-4, atol 1e-5 * max|oracle| (one layer, <= 36 summands:
36 * 2^-24 = 2e-6 of sum|terms|, divided by |z| > 0.1; an a-priori bound, tests/tolerances.py).
An oracle with epsilon 0.05 instead of 0.5 fails it (test_the_tolerance_rejects_a_wrong_epsilon).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx.errors import ModelError
from lrp_onnx.rules import LRP0, Epsilon, Flat, Gamma, ZPlus

RTOL, ATOL_SCALE = 1e-4, 1e-5
X_SHAPE = (3, 4, 3)      # C, H, W of one sample

RULES = {
    "lrp0": LRP0(),
    "epsilon": Epsilon(1e-6),
    "epsilon_big": Epsilon(0.5),
    "epsilon_relative": Epsilon(1e-6, relative=0.25),
    "zplus": ZPlus(),
    "gamma": Gamma(0.25),
    "flat": Flat(),
}

#: (op, opset, axes as given to ONNX, keepdims)
CASES = [
    ("ReduceMean", 17, [2, 3], 0),
    ("ReduceMean", 17, [2, 3], 1),
    ("ReduceMean", 18, [-1, 2], 0),
    ("ReduceMean", 18, [1], 1),
    ("ReduceSum", 17, [2, 3], 1),
    ("ReduceSum", 17, [3], 0),
    ("ReduceSum", 18, [1, -1], 0),
]


def reduce_model(op, opset, axes, keepdims, y_shape, noop=None):
    """x (N, C, H, W) -> op -> y; axes as an attribute (ReduceMean before opset 18) or an input."""
    attrs = {"keepdims": keepdims}
    inputs, inits = ["x"], []
    if axes is not None:
        if op == "ReduceMean" and opset < 18:
            attrs["axes"] = list(axes)
        else:
            inputs.append("axes")
            inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    node = helper.make_node(op, inputs, ["y"], name="reduce", **attrs)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *X_SHAPE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def dense_matrix(op, axes, keepdims):
    """(M, output sample shape): M[j, k] = weight when flat input j is reduced into flat output k."""
    rank = len(X_SHAPE) + 1
    reduced = sorted(a % rank - 1 for a in axes)          # axes of one sample
    kept_shape = tuple(1 if i in reduced else d for i, d in enumerate(X_SHAPE))
    count = int(np.prod([X_SHAPE[i] for i in reduced]))
    weight = 1.0 / count if op == "ReduceMean" else 1.0
    m = np.zeros((int(np.prod(X_SHAPE)), int(np.prod(kept_shape))))
    for j, index in enumerate(np.ndindex(*X_SHAPE)):
        target = tuple(0 if i in reduced else v for i, v in enumerate(index))
        m[j, np.ravel_multi_index(target, kept_shape)] = weight
    out_shape = kept_shape if keepdims else tuple(d for i, d in enumerate(X_SHAPE) if i not in reduced)
    return m, out_shape


def incr(z, rule):
    eps = rule.epsilon + getattr(rule, "relative", 0.0) * np.sqrt(np.mean(z * z, axis=1, keepdims=True))
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def oracle(rule, m, a, mask):
    """R_in (n, D) of ``rule`` on z = a M with R = (a M) * mask (see module doc)."""
    r = (a @ m) * mask
    if isinstance(rule, (LRP0, Epsilon)):
        return a * ((r / incr(a @ m, rule)) @ m.T)
    if isinstance(rule, ZPlus):
        ap, an = np.maximum(a, 0), np.minimum(a, 0)
        s = r / incr(ap @ m + an @ m, rule)
        return ap * (s @ m.T) + an * (s @ m.T)
    if isinstance(rule, Gamma):
        ap, an = np.maximum(a, 0), np.minimum(a, 0)
        z = ap @ m + an @ m
        s = r * (z > 0) / incr(z, rule) + r * (z < 0) / incr(z, rule)
        return ap * (s @ m.T) + an * (s @ m.T)
    if isinstance(rule, Flat):
        return (r / incr(np.ones_like(a) @ m, rule)) @ m.T
    raise AssertionError(rule)


def data(rng, n=2):
    offset = rng.choice([-1.5, 1.5], size=(n, X_SHAPE[0], 1, 1))
    return (offset + rng.normal(size=(n, *X_SHAPE))).astype(np.float32)


def composite(rule):
    return Composite(((Family("all"), rule),), "winner", "one_rule")


@pytest.mark.parametrize("rule_id", list(RULES))
@pytest.mark.parametrize("op,opset,axes,keepdims", CASES)
def test_reduce_against_dense_oracle(op, opset, axes, keepdims, rule_id):
    rng = np.random.default_rng(0)
    rule = RULES[rule_id]
    m, y_shape = dense_matrix(op, axes, keepdims)
    x = data(rng)
    a = x.reshape(len(x), -1).astype(np.float64)
    z = a @ m
    if op == "ReduceMean" or axes != [1, -1]:
        assert np.abs(z).min() > 0.1, "ill-conditioned data"
    else:   # a sum over channels of +-1.5 offsets can cancel: check the case is still conditioned
        assert np.abs(z).min() > 1e-2, "ill-conditioned data"
    mask = rng.normal(size=(len(x), *y_shape))
    ex = lrp_onnx.Explainer(reduce_model(op, opset, axes, keepdims, y_shape), composite(rule))
    assert list(ex.rules.values()) == [rule]
    res = ex.explain(x, target=mask.astype(np.float32))
    np.testing.assert_allclose(res.output.reshape(len(x), -1), z, rtol=1e-5, atol=1e-6)
    expected = oracle(rule, m, a, mask.reshape(len(x), -1))
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(res.relevance.reshape(len(x), -1), expected, rtol=RTOL, atol=ATOL_SCALE * scale)


def test_the_tolerance_rejects_a_wrong_epsilon():
    """The engine's Epsilon(0.5) against the oracle of Epsilon(0.05) (10x smaller): the
    comparison at RTOL / ATOL_SCALE fails, while the right oracle passes."""
    op, opset, axes, keepdims = CASES[0]
    rng = np.random.default_rng(0)
    m, y_shape = dense_matrix(op, axes, keepdims)
    x = data(rng)
    a = x.reshape(len(x), -1).astype(np.float64)
    mask = rng.normal(size=(len(x), *y_shape))
    ex = lrp_onnx.Explainer(reduce_model(op, opset, axes, keepdims, y_shape), composite(RULES["epsilon_big"]))
    got = ex.explain(x, target=mask.astype(np.float32)).relevance.reshape(len(x), -1)
    for rule, agrees in ((RULES["epsilon_big"], True), (Epsilon(0.05), False)):
        expected = oracle(rule, m, a, mask.reshape(len(x), -1))
        assert np.allclose(got, expected, rtol=RTOL, atol=ATOL_SCALE * np.abs(expected).max()) == agrees, rule


def test_reduce_rules_differ():
    """The cases above are not vacuous: Epsilon(0.5) and Flat give other relevance than LRP-0."""
    m, y_shape = dense_matrix("ReduceMean", [2, 3], 0)
    a = data(np.random.default_rng(0)).reshape(2, -1).astype(np.float64)
    mask = np.ones((2, int(np.prod(y_shape))))
    base = oracle(RULES["lrp0"], m, a, mask)
    for other in ("epsilon_big", "flat"):
        assert np.abs(oracle(RULES[other], m, a, mask) - base).max() > 1e-2 * np.abs(base).max()


@pytest.mark.parametrize("op,opset,axes", [("ReduceMean", 17, [0, 2]), ("ReduceSum", 18, [-4]),
                                           ("ReduceMean", 17, None), ("ReduceSum", 18, None)])
def test_reduce_over_the_batch_axis_is_an_error(op, opset, axes):
    """Explicit axis 0 (or -4), or no axes (= every axis)."""
    y_shape = (1, 1, 1) if axes is None else ((1, 4, 3) if 0 in axes and 2 in axes else X_SHAPE)
    y_shape = y_shape if axes != [0, 2] else (3, 1, 3)
    graph_model = reduce_model(op, opset, axes, 1, y_shape)
    graph_model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1   # the batch axis is reduced too
    with pytest.raises(ModelError, match=rf"{op} 'reduce' reduces over the batch axis"):
        lrp_onnx.Explainer(graph_model, composite(LRP0()))


@pytest.mark.parametrize("rule_id", ["lrp0", "zplus", "flat"])
def test_reduce_sum_with_no_axes_and_noop_is_the_identity(rule_id):
    """ReduceSum (opset 18) without axes and noop_with_empty_axes=1 is y = x (M = identity):
    LRP-0 and ZPlus give R_x = x * R / incr(x) = R, Flat R / incr(1) = R (up to 1e-6)."""
    rng = np.random.default_rng(1)
    x = data(rng)
    model = reduce_model("ReduceSum", 18, None, 1, X_SHAPE, noop=1)
    mask = rng.normal(size=x.shape)
    res = lrp_onnx.Explainer(model, composite(RULES[rule_id])).explain(x, target=mask.astype(np.float32))
    np.testing.assert_allclose(res.output, x, rtol=0, atol=0)
    expected = x.astype(np.float64) * mask
    np.testing.assert_allclose(res.relevance, expected, rtol=RTOL, atol=ATOL_SCALE * np.abs(expected).max())
