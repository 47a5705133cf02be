"""lrp_onnx/ops/softmax.py (family "softmax") against a dense numpy formula written here.

The Softmax sits inside the graph: y = Softmax(x) * c with a constant c (Mul by a constant
passes relevance unchanged, and keeps the Softmax from being stripped as the output), so the
relevance at the Softmax output is R = y * mask and the oracle (float64) is AttnLRP's rule

    R_x = x * (R - s * sum_axis R),     s = softmax(x) along the axis,

with masked logits (-inf, or the finite -3.4e38 of finfo.min masks) getting 0 and no NaN.
CP-LRP (CPConstant): nothing reaches x. Gradient: G_x = s * (G - sum_axis(s G)).

Error: R_x is x times a difference of O(|R|) float32 terms summed over <= 6 entries: about
8 * 2^-24 * |x| * max|R| < 1e-6 * max|R_x| for |x| = O(1). Tolerance rtol 1e-4, atol 1e-5 *
max|oracle|. The wrong variant R_x = x * R (the rule without its bias term) is outside it.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx.rules import AttnSoftmax, CPConstant, LRP0

from handler_models import make_model
from test_bilinear import assert_close, assert_rejected

ATTN = Composite(((Family("softmax"), AttnSoftmax()), (Family("all"), LRP0())), "winner", "attn")
CP = Composite(((Family("softmax"), CPConstant()), (Family("all"), LRP0())), "winner", "cp")


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_model(shape, axis, mask_value=None):
    """x (+ a constant mask with ``mask_value`` at some positions) -> Softmax -> * c -> y."""
    params = {"c": np.array(1.5, np.float32)}
    nodes, logits = [], "x"
    if mask_value is not None:
        params["m"] = np.triu(np.full(shape[-2:], mask_value, np.float32), k=1)   # causal
        nodes.append(helper.make_node("Add", ["x", "m"], ["logits"], name="mask"))
        logits = "logits"
    nodes += [helper.make_node("Softmax", [logits], ["s"], name="softmax", axis=axis),
              helper.make_node("Mul", ["s", "c"], ["y"], name="scale")]
    return make_model(nodes, shape, shape, params), params


@pytest.mark.parametrize("shape,axis", [((5,), -1), ((3, 4), -1), ((3, 4), 1), ((2, 3, 3), -1)])
def test_attnlrp_softmax_rule(shape, axis):
    rng = np.random.default_rng(0)
    model, _ = softmax_model(shape, axis)
    ex = lrp_onnx.Explainer(model, ATTN)
    assert ex.rules == {"softmax": AttnSoftmax()}
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    mask = rng.normal(size=x.shape)
    res = ex.explain(x, target=mask.astype(np.float32))
    xs = x.astype(np.float64)
    s = softmax(xs, axis)
    r = 1.5 * s * mask
    expected = xs * (r - s * r.sum(axis=axis, keepdims=True))
    assert_close(res.relevance, expected, "R_x")
    assert_rejected(res.relevance, xs * r, expected)


@pytest.mark.parametrize("mask_value", [-np.inf, np.finfo(np.float32).min])
def test_masked_logits_get_no_relevance(mask_value):
    """A causal mask added to the logits: the masked positions get exactly 0, no NaN; the rest
    follows the oracle (the Add splits R_logits in proportion; the mask's share is absorbed)."""
    rng = np.random.default_rng(1)
    model, params = softmax_model((4, 4), -1, mask_value)
    x = rng.normal(size=(2, 4, 4)).astype(np.float32)
    mask = rng.normal(size=x.shape)
    res = lrp_onnx.Explainer(model, ATTN).explain(x, target=mask.astype(np.float32))
    assert np.all(np.isfinite(res.relevance))
    masked = np.triu(np.ones((4, 4), bool), k=1)
    np.testing.assert_array_equal(res.relevance[:, masked], 0)
    xs = x.astype(np.float64)
    logits = np.where(masked, -np.inf, xs)
    s = softmax(logits, -1)
    r = 1.5 * s * mask
    r_logits = np.where(masked, 0.0, logits) * (r - s * r.sum(axis=-1, keepdims=True))
    expected = np.where(masked, 0.0, r_logits)   # unmasked: the mask adds 0, x takes all
    assert_close(res.relevance, expected, "R_x")
    assert_rejected(res.relevance, np.where(masked, 0.0, logits) * r, expected)


def test_cp_lrp_softmax_passes_nothing():
    """CP-LRP: the Softmax is a constant; the input gets zeros (and no nodes are built for it)."""
    rng = np.random.default_rng(2)
    model, _ = softmax_model((3, 4), -1)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    res = lrp_onnx.Explainer(model, CP).explain(x, target=0)
    np.testing.assert_array_equal(res.relevance, 0)


def test_softmax_gradient():
    rng = np.random.default_rng(3)
    model, _ = softmax_model((3, 4), -1)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    mask = rng.normal(size=x.shape)
    res = lrp_onnx.Explainer(model, "gradient").explain(x, target=mask.astype(np.float32))
    s = softmax(x.astype(np.float64), -1)
    g = 1.5 * mask
    assert_close(res.relevance, s * (g - (s * g).sum(axis=-1, keepdims=True)), "G_x")


def test_mask_built_on_a_shape_path_with_trilu_and_where():
    """A causal mask made the way exporters make it (ConstantOfShape -> Trilu -> Cast -> Where
    with -inf) stays off the relevance path: Trilu needs no handler; Where gives the logits
    their relevance where they were kept and none where -inf was."""
    rng = np.random.default_rng(4)
    params = {"c": np.array(1.5, np.float32), "size": np.array([4, 4], np.int64), "k": np.array(1, np.int64),
              "minf": np.array(-np.inf, np.float32)}
    nodes = [helper.make_node("ConstantOfShape", ["size"], ["ones"], name="ones",
                              value=helper.make_tensor("one", 1, [1], [1.0])),
             helper.make_node("Trilu", ["ones", "k"], ["upper"], name="trilu", upper=1),
             helper.make_node("Cast", ["upper"], ["masked"], name="cast", to=9),
             helper.make_node("Where", ["masked", "minf", "x"], ["logits"], name="where"),
             helper.make_node("Softmax", ["logits"], ["s"], name="softmax", axis=-1),
             helper.make_node("Mul", ["s", "c"], ["y"], name="scale")]
    x = rng.normal(size=(2, 4, 4)).astype(np.float32)
    mask = rng.normal(size=x.shape)
    res = lrp_onnx.Explainer(make_model(nodes, (4, 4), (4, 4), params), ATTN).explain(x, target=mask.astype(np.float32))
    masked = np.triu(np.ones((4, 4), bool), k=1)
    logits = np.where(masked, -np.inf, x.astype(np.float64))
    s = softmax(logits, -1)
    r = 1.5 * s * mask
    expected = np.where(masked, 0.0, logits) * (r - s * r.sum(axis=-1, keepdims=True))
    assert np.all(np.isfinite(res.relevance))
    assert_close(res.relevance, expected, "R_x")
    assert_rejected(res.relevance, np.where(masked, 0.0, logits) * r, expected)


def test_unmasked_equals_where_isinf_on_special_values():
    """ops/softmax.unmasked (Max, Greater, Cast, Mul: no Where) against numpy's where(x == -inf, 0, x)."""
    import onnxruntime as ort
    from onnx import TensorProto

    from lrp_onnx.builder import GraphBuilder
    from lrp_onnx.ops.softmax import unmasked

    low, high = np.finfo(np.float32).min, np.finfo(np.float32).max
    x = np.array([[-np.inf, np.inf, low, high, 0.0, -0.0, -1.5, 2.0, 1e-45, -1e-45]], np.float32)
    b = GraphBuilder(17, ["x"])
    out = unmasked(b, "x")
    graph = helper.make_graph(b.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, x.shape)], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(got, np.where(x == -np.inf, 0.0, x))
    assert "Where" not in {node.op_type for node in b.nodes}
