"""lrp_onnx/ops/bilinear.py (family "bilinear") against dense numpy formulas written here.

Both factors are cut out of the one data input x by constant Slice + Reshape (exact scatters
back, tests/test_slicing.py), so each is an activation on the relevance path. With R = y * mask
at the product y (the explained output), the oracle (float64) is AttnLRP's uniform rule:

    MatMul/Einsum z = a b:  s = R / stab(2 z),  R_a = a * (s b^T),  R_b = b * (a^T s)
                            (summed over the axes a factor was broadcast along)
    element-wise a * b:     R_a = R_b = R / 2
    CP-LRP (CPConstant):    a Softmax output A is a constant weight: R_V = V * (A^T (R / stab(z))),
                            none to A; SwiGLU act(gate) * up: R_up = R, none to the gate
    Gradient:               G_a = G b^T, G_b = a^T G

stab(u) = u + 1e-8 sgn(u). Since R = z * mask, s = mask / 2 up to the stabilizer: every R_a
entry is a sum of K <= 6 float32 products of O(1) values, whose rounding error is about
K * 2^-24 * sum|terms| < 1e-6 * max|R|. Tolerance: rtol 1e-4, atol 1e-5 * max|oracle| (10x
margin). Each oracle test also checks that a deliberately wrong variant (all of the epsilon
relevance to each factor, i.e. stab(z) instead of stab(2z); or no relevance to a factor) is
outside the tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx.errors import ModelError
from lrp_onnx.ops.families import family_of
from lrp_onnx.rules import CPConstant, LRP0, Uniform

from handler_models import make_model

RTOL, ATOL_SCALE, EPS = 1e-4, 1e-5, 1e-8
UNIFORM = Composite(((Family("bilinear"), Uniform()), (Family("all"), LRP0())), "winner", "uniform")
CP = Composite(((Family("bilinear", "softmax"), CPConstant()), (Family("all"), LRP0())), "winner", "cp")


def assert_close(actual, reference, what=""):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    np.testing.assert_allclose(actual, reference, rtol=RTOL, atol=ATOL_SCALE * np.abs(reference).max(), err_msg=what)


def assert_rejected(actual, wrong, reference):
    """The tolerance of ``assert_close`` does not accept ``wrong``."""
    excess = np.abs(np.asarray(actual, np.float64) - wrong) - RTOL * np.abs(wrong)
    assert excess.max() > ATOL_SCALE * np.abs(reference).max(), "the tolerance cannot tell the wrong variant apart"


def stab(u):
    return u + EPS * np.where(u >= 0, 1.0, -1.0)


def factors(shapes, params, names=("a", "b")):
    """Nodes cutting x (N, sum of sizes) into tensors of the given (per-sample) shapes."""
    nodes, start = [], 0
    for name, shape in zip(names, shapes):
        size = int(np.prod(shape))
        params[f"{name}_s"], params[f"{name}_e"], params[f"{name}_ax"] = (np.array([v], np.int64) for v in (start, start + size, 1))
        params[f"{name}_shape"] = np.array([-1, *shape], np.int64)
        nodes += [helper.make_node("Slice", ["x", f"{name}_s", f"{name}_e", f"{name}_ax"], [f"{name}_flat"], name=f"cut_{name}"),
                  helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [name], name=f"shape_{name}")]
        start += size
    return nodes, start


def split(x, shapes):
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(x[:, start:start + size].astype(np.float64).reshape(len(x), *shape))
        start += size
    return out


def product_model(op, shapes, out_shape, **attrs):
    params = {}
    nodes, width = factors(shapes, params)
    nodes.append(helper.make_node(op, ["a", "b"], ["y"], name="product", **attrs))
    return make_model(nodes, (width,), out_shape, params), width


# --------------------------------------------------------------------------- MatMul


@pytest.mark.parametrize("shapes,out_shape", [
    (((3, 4), (4, 5)), (3, 5)),                        # one matrix per sample
    (((2, 3, 4), (2, 4, 5)), (2, 3, 5)),              # batched heads
    (((2, 3, 4), (1, 4, 5)), (2, 3, 5)),              # b broadcast over the heads
])
def test_matmul_of_two_activations_uniform(shapes, out_shape):
    """R_a = a (s b^T), R_b = b (a^T s) summed over b's broadcast head axis; conserved."""
    rng = np.random.default_rng(0)
    model, width = product_model("MatMul", shapes, out_shape)
    ex = lrp_onnx.Explainer(model, UNIFORM)
    assert ex.rules == {"product": Uniform()}
    x = rng.normal(size=(2, width)).astype(np.float32)
    mask = rng.normal(size=(2, *out_shape))
    res = ex.explain(x, target=mask.astype(np.float32), layers=("a", "b"))
    a, b = split(x, shapes)
    z = a @ b
    r = z * mask
    s = r / stab(2 * z)
    r_a = a * (s @ np.swapaxes(b, -1, -2))
    c_b = np.swapaxes(a, -1, -2) @ s
    r_b = b * (c_b.sum(axis=1, keepdims=True) if b.shape[1] != c_b.shape[1] else c_b)
    assert_close(res.output, z, "forward")
    assert_close(res.layers["a"], r_a, "R_a")
    assert_close(res.layers["b"], r_b, "R_b")
    assert_rejected(res.layers["a"], 2 * r_a, r_a)   # stab(z): the whole epsilon relevance to a
    np.testing.assert_allclose(res.relevance.sum(axis=1), r.reshape(2, -1).sum(axis=1), rtol=1e-4,
                               atol=1e-5 * np.abs(r).sum())   # no bias: sum R_a + sum R_b = sum R


def test_matmul_gradient():
    """gradient: d sum(mask * a b) / da = mask b^T, / db = a^T mask."""
    rng = np.random.default_rng(1)
    shapes, out_shape = ((2, 3, 4), (2, 4, 5)), (2, 3, 5)
    model, width = product_model("MatMul", shapes, out_shape)
    x = rng.normal(size=(2, width)).astype(np.float32)
    mask = rng.normal(size=(2, *out_shape))
    res = lrp_onnx.Explainer(model, "gradient").explain(x, target=mask.astype(np.float32), layers=("a", "b"))
    a, b = split(x, shapes)
    assert_close(res.layers["a"], mask @ np.swapaxes(b, -1, -2), "G_a")
    assert_close(res.layers["b"], np.swapaxes(a, -1, -2) @ mask, "G_b")


def test_family_of_matmul_depends_on_the_operand():
    """One registry entry for MatMul: with a constant weight it is "dense", with two activations
    "bilinear" (ops/families.py)."""
    model, _ = product_model("MatMul", ((3, 4), (4, 5)), (3, 5))
    prepared = lrp_onnx.compile.prepare(model)
    mg, sub = prepared.graph, prepared.subgraph
    assert family_of(mg, sub.tensors, mg.nodes["product"]) == "bilinear"
    rng = np.random.default_rng(2)
    dense = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], (3, 4), (3, 5), {"W": rng.normal(size=(4, 5))})
    prepared = lrp_onnx.compile.prepare(dense)
    assert family_of(prepared.graph, prepared.subgraph.tensors, prepared.graph.nodes["fc"]) == "dense"


# --------------------------------------------------------------------------- Einsum


@pytest.mark.parametrize("equation,shapes,out_shape,grad_a,grad_b", [
    ("bhqd,bhkd->bhqk", ((2, 3, 4), (2, 5, 4)), (2, 3, 5), "bhqk,bhkd->bhqd", "bhqd,bhqk->bhkd"),
    ("bhqk,bhkd->bhqd", ((2, 3, 5), (2, 5, 4)), (2, 3, 4), "bhqd,bhkd->bhqk", "bhqk,bhqd->bhkd"),
    ("...ij,...jk->...ik", ((2, 3, 4), (2, 4, 5)), (2, 3, 5), "...ik,...jk->...ij", "...ij,...ik->...jk"),
])
def test_einsum_attention_equations(equation, shapes, out_shape, grad_a, grad_b):
    """R_a = a * einsum(grad_a)(s, b), R_b = b * einsum(grad_b)(a, s) (contractions written out
    here); the gradient: the same contractions of the mask."""
    rng = np.random.default_rng(3)
    model, width = product_model("Einsum", shapes, out_shape, equation=equation)
    x = rng.normal(size=(2, width)).astype(np.float32)
    mask = rng.normal(size=(2, *out_shape))
    res = lrp_onnx.Explainer(model, UNIFORM).explain(x, target=mask.astype(np.float32), layers=("a", "b"))
    a, b = split(x, shapes)
    z = np.einsum(equation, a, b)
    s = z * mask / stab(2 * z)
    r_a = a * np.einsum(grad_a, s, b)
    r_b = b * np.einsum(grad_b, a, s)
    assert_close(res.output, z, "forward")
    assert_close(res.layers["a"], r_a, "R_a")
    assert_close(res.layers["b"], r_b, "R_b")
    assert_rejected(res.layers["b"], 2 * r_b, r_b)
    grad = lrp_onnx.Explainer(model, "gradient").explain(x, target=mask.astype(np.float32), layers=("a", "b"))
    assert_close(grad.layers["a"], np.einsum(grad_a, mask, b), "G_a")
    assert_close(grad.layers["b"], np.einsum(grad_b, a, mask), "G_b")


@pytest.mark.parametrize("equation,shapes,out_shape", [
    ("bii,bij->bj", ((3, 3), (3, 4)), (4,)),            # a repeated index (a diagonal)
    ("bij,bkl->bik", ((3, 4), (2, 5)), (3, 2)),         # j and l summed within one operand
])
def test_unsupported_einsum_is_a_clear_error(equation, shapes, out_shape):
    model, _ = product_model("Einsum", shapes, out_shape, equation=equation)
    with pytest.raises(ModelError, match=rf"Einsum 'product' has the equation '{equation}'"):
        lrp_onnx.Explainer(model, UNIFORM)


# --------------------------------------------------------------------------- element-wise Mul


def test_mul_of_two_activations_halves():
    """y = Relu(a) * b with b broadcast over the rows: R_relu = R / 2, R_b = sum_rows R / 2."""
    rng = np.random.default_rng(4)
    params = {}
    nodes, width = factors(((3, 4), (1, 4)), params)
    nodes += [helper.make_node("Relu", ["a"], ["ra"], name="relu"), helper.make_node("Mul", ["ra", "b"], ["y"], name="product")]
    ex = lrp_onnx.Explainer(make_model(nodes, (width,), (3, 4), params), UNIFORM)
    assert ex.rules == {"product": Uniform()}
    x = rng.normal(size=(2, width)).astype(np.float32)
    mask = rng.normal(size=(2, 3, 4))
    res = ex.explain(x, target=mask.astype(np.float32), layers=("a", "b"))
    a, b = split(x, ((3, 4), (1, 4)))
    r = np.maximum(a, 0) * b * mask
    assert_close(res.layers["a"], r / 2, "R_a")
    assert_close(res.layers["b"], (r / 2).sum(axis=1, keepdims=True), "R_b")
    assert_rejected(res.layers["a"], r, r)   # all to one factor


def swiglu_model():
    """y = SiLU(g) * up with SiLU written as g * Sigmoid(g) (torch's export)."""
    params = {}
    nodes, width = factors(((4,), (4,)), params, names=("g", "up"))
    nodes += [helper.make_node("Sigmoid", ["g"], ["sg"], name="sigmoid"), helper.make_node("Mul", ["g", "sg"], ["silu"], name="silu"),
              helper.make_node("Mul", ["silu", "up"], ["y"], name="product")]
    return make_model(nodes, (width,), (4,), params), width


@pytest.mark.parametrize("composite", ["uniform", "cp"])
def test_swiglu(composite):
    """Uniform: R_up = R / 2 and R_g = R / 2 (SiLU passes all to g, none to the sigmoid gate).
    CP-LRP: act(gate) is a constant, R_up = R, R_g = 0."""
    rng = np.random.default_rng(5)
    model, width = swiglu_model()
    ex = lrp_onnx.Explainer(model, UNIFORM if composite == "uniform" else CP)
    assert set(ex.rules) == {"product"}   # the SiLU product is a gate, not bilinear
    x = rng.normal(size=(3, width)).astype(np.float32)
    mask = rng.normal(size=(3, 4))
    res = ex.explain(x, target=mask.astype(np.float32), layers=("g", "up"))
    g, up = split(x, ((4,), (4,)))
    r = g / (1 + np.exp(-g)) * up * mask
    share = 0.5 if composite == "uniform" else 1.0
    assert_close(res.layers["up"], share * r, "R_up")
    assert_close(res.layers["g"], (1 - share) * r, "R_g") if composite == "uniform" else \
        np.testing.assert_array_equal(res.layers["g"], 0)
    assert_rejected(res.layers["up"], (1.5 - share) * r, r)


# --------------------------------------------------------------------------- CP-LRP in attention


@pytest.mark.parametrize("op", ["MatMul", "Einsum"])
def test_cp_lrp_attention_probabilities_are_constant(op):
    """y = Softmax(a) V: the attention matrix is a constant weight, R_V = V * (A^T (R / stab(z))),
    and nothing reaches a (the logits)."""
    rng = np.random.default_rng(6)
    params = {}
    nodes, width = factors(((3, 3), (3, 4)), params, names=("a", "v"))
    attrs = {"equation": "bqk,bkd->bqd"} if op == "Einsum" else {}
    nodes += [helper.make_node("Softmax", ["a"], ["p"], name="softmax", axis=-1),
              helper.make_node(op, ["p", "v"], ["y"], name="av", **attrs)]
    ex = lrp_onnx.Explainer(make_model(nodes, (width,), (3, 4), params), CP)
    assert ex.rules == {"softmax": CPConstant(), "av": CPConstant()}
    x = rng.normal(size=(2, width)).astype(np.float32)
    mask = rng.normal(size=(2, 3, 4))
    res = ex.explain(x, target=mask.astype(np.float32), layers=("a", "v"))
    a, v = split(x, ((3, 3), (3, 4)))
    p = np.exp(a - a.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    z = p @ v
    r_v = v * (np.swapaxes(p, -1, -2) @ (z * mask / stab(z)))
    assert_close(res.layers["v"], r_v, "R_V")
    np.testing.assert_array_equal(res.layers["a"], 0)
    assert_rejected(res.layers["v"], r_v / 2, r_v)   # the uniform rule's half
