"""lrp_onnx/ops/normalization.py: an unfoldable BatchNormalization as a per-channel affine layer
with a rule (family "norm"); LayerNormalization and RMSNormalization with their statistics held
constant, as LXT does (family "norm", see the section below).

Oracle (float64, written here from the ONNX definition of BatchNormalization in inference mode):
y = s x + t per channel, s = scale / sqrt(var + eps), t = B - mean s. With R = y * mask:

    LRP0 / Epsilon   R_x = x s R / incr(s x + t)             (zero_bias: incr(s x))
    ZPlus            z = x+ s+ + x- s- + t+,  R_x = (x+ s+ + x- s-) R / incr(z)
    Pass             R_x = R
    incr(z) = z + epsilon sgn(z), sgn(0) = +1.

A composite without a "norm" predicate gives the BatchNormalization Epsilon(1e-6)
(composites.UNCOUNTED_FAMILIES); Family("norm") picks another rule.

Data: x = +-U(1, 2), |s| in [0.5, 1.6], |t| < 0.53, so |s x + t| >= 0.1 (asserted) and float32
rounding moves R by < 1e-5 relative. Tolerance: rtol 1e-4, atol 1e-5 * max|oracle|.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx.composites import UNCOUNTED_FAMILIES, Index, Name
from lrp_onnx.rules import LRP0, Epsilon, Gamma, Pass, ZPlus

RTOL, ATOL_SCALE = 1e-4, 1e-5
BN_EPS = 1e-3


def assert_close(actual, reference, what=""):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    scale = float(np.abs(reference).max()) or 1.0
    np.testing.assert_allclose(actual, reference, rtol=RTOL, atol=ATOL_SCALE * scale, err_msg=what)


def model_of(nodes, x_shape, y_shape, params, opset=17):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def bn_params(rng, c):
    """Statistics with |s| in [0.5, 1.6] (both signs) and |t| < 0.53."""
    var = rng.uniform(0.5, 2.0, size=c)
    s = rng.choice([-1, 1], size=c) * rng.uniform(0.5, 1.6, size=c)
    scale = s * np.sqrt(var + BN_EPS)
    mean = rng.uniform(-0.2, 0.2, size=c)
    bias = rng.uniform(-0.2, 0.2, size=c)      # t = bias - mean s: |t| <= 0.2 + 0.2 * 1.6 < 0.53
    return {"scale": scale, "B": bias, "mean": mean, "var": var}


def affine(params, rank):
    """(s, t) per channel in float64 from the float32 parameters, shaped to broadcast at ``rank``."""
    p = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    s = p["scale"] / np.sqrt(p["var"] + np.float64(np.float32(BN_EPS)))
    t = p["B"] - p["mean"] * s
    shape = (1, -1) + (1,) * (rank - 2)
    return s.reshape(shape), t.reshape(shape)


def incr(z, epsilon):
    return z + epsilon * np.where(z >= 0, 1.0, -1.0)


def oracle(rule, a, s, t, mask):
    """R_x of ``rule`` on y = s a + t with R = y * mask (module doc)."""
    r = (s * a + t) * mask
    if isinstance(rule, Pass):
        return r
    if isinstance(rule, (LRP0, Epsilon)):
        z = s * a + (0 if rule.zero_bias else t)
        return a * s * r / incr(z, rule.epsilon)
    if isinstance(rule, ZPlus):
        contrib = np.maximum(a, 0) * np.maximum(s, 0) + np.minimum(a, 0) * np.minimum(s, 0)
        return contrib * r / incr(contrib + np.maximum(t, 0), rule.epsilon)
    raise AssertionError(rule)


def bn_node(inp="x", out="y"):
    return helper.make_node("BatchNormalization", [inp, "scale", "B", "mean", "var"], [out], name="bn", epsilon=BN_EPS)


def signed_uniform(rng, shape):
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1.0, 2.0, size=shape)).astype(np.float32)


#: (composite rules, the rule the BatchNormalization must get)
COMPOSITES = {
    "default": (((Family("all"), LRP0()),), UNCOUNTED_FAMILIES["norm"]),
    "norm_lrp0": (((Family("norm"), LRP0()), (Family("all"), Epsilon())), LRP0()),
    "norm_lrp0_zero_bias": (((Family("norm"), LRP0(zero_bias=True)),), LRP0(zero_bias=True)),
    "norm_epsilon_big": (((Family("norm"), Epsilon(0.25)),), Epsilon(0.25)),
    "norm_zplus": (((Family("norm"), ZPlus()),), ZPlus()),
    "norm_pass": (((Family("all"), LRP0()), (Family("norm"), Pass())), Pass()),
}


def test_default_rule_is_epsilon_1e_6():
    assert UNCOUNTED_FAMILIES["norm"] == Epsilon(1e-6)


@pytest.mark.parametrize("composite_id", list(COMPOSITES))
@pytest.mark.parametrize("x_shape", [(3,), (3, 4), (3, 2, 3)])
def test_batchnorm_on_the_input(x_shape, composite_id):
    """x -> BatchNormalization -> y (nothing to fold it into), ranks 2, 3 and 4."""
    rng = np.random.default_rng(0)
    pairs, rule = COMPOSITES[composite_id]
    c = x_shape[0]
    params = bn_params(rng, c)
    ex = lrp_onnx.Explainer(model_of([bn_node()], x_shape, x_shape, params), Composite(pairs, "winner", composite_id))
    assert ex.rules == {"bn": rule}
    x = signed_uniform(rng, (2, *x_shape))
    mask = rng.normal(size=x.shape)
    s, t = affine(params, len(x_shape) + 1)
    a = x.astype(np.float64)
    assert np.abs(s * a + t).min() > 0.1, "ill-conditioned data"
    res = ex.explain(x, target=mask.astype(np.float32))
    assert_close(res.output, s * a + t, "forward")
    assert_close(res.relevance, oracle(rule, a, s, t, mask), "R_x")


@pytest.mark.parametrize("composite_id", ["default", "norm_zplus", "norm_pass"])
def test_batchnorm_after_concat(composite_id):
    """x (N,2,H,W) -> Concat(x, Relu(x)) -> BatchNormalization -> y: the BN stays (its producer is
    a Concat); R_cat from the oracle, R_x = R_cat[:, :2] + R_cat[:, 2:] (Relu passes)."""
    rng = np.random.default_rng(1)
    pairs, rule = COMPOSITES[composite_id]
    params = bn_params(rng, 4)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Concat", ["x", "r"], ["cat"], name="cat", axis=1), bn_node("cat")]
    ex = lrp_onnx.Explainer(model_of(nodes, (2, 3, 3), (4, 3, 3), params), Composite(pairs, "winner", composite_id))
    assert ex.rules == {"bn": rule}
    x = signed_uniform(rng, (2, 2, 3, 3))
    mask = rng.normal(size=(2, 4, 3, 3))
    res = ex.explain(x, target=mask.astype(np.float32), layers=("cat",))
    a = np.concatenate([x, np.maximum(x, 0)], axis=1).astype(np.float64)
    s, t = affine(params, 4)
    r_cat = oracle(rule, a, s, t, mask)
    assert_close(res.layers["cat"], r_cat, "R_cat")
    assert_close(res.relevance, r_cat[:, :2] + r_cat[:, 2:], "R_x")


def test_norm_rule_by_name_and_index_does_not_count_it():
    """The BatchNormalization is not counted by Index: Index(0, 1) is the Gemm after it (behind
    a Relu, so that the BatchNormalization cannot be folded into the Gemm)."""
    rng = np.random.default_rng(2)
    params = {**bn_params(rng, 3), "W": rng.normal(size=(2, 3))}
    nodes = [bn_node("x", "h"), helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "W"], ["y"], name="fc", transB=1)]
    composite = Composite(((Index(0, 1), Epsilon(0.5)), (Name("^bn$"), Pass())), "winner", "by_name")
    ex = lrp_onnx.Explainer(model_of(nodes, (3,), (2,), params), composite)
    assert ex.rules == {"fc": Epsilon(0.5), "bn": Pass()}


# --------------------------------------------------------------------------- LayerNorm, RMSNorm
#
# Oracle (LXT's layer_norm / rms_norm_identity, written here from their definition): sigma (the
# rms) held constant, so y = W x + b is linear, and the norm rule is the epsilon rule on it:
#   LayerNorm  s = R / incr(y - [zero_bias] b),  R_x = x * (g s - mean(g s)) / sigma
#   RMSNorm    s = R / incr(y),                  R_x = x * g s / rms
#   Pass       R_x = R
# With R = y * mask, s = mask * y / incr(y) is well conditioned (|y| >= 1e-3 asserted), so
# float32 rounding moves R_x by ~1e-6 of its scale; tolerance rtol 1e-4, atol 1e-5 * max|R_x|.
# The wrong variants (identity for a rule with the centering; no centering) differ by O(max|R|).


def layer_norm_forward(x, g, b, red, eps, centered=True):
    centered_x = x - x.mean(axis=red, keepdims=True) if centered else x
    sigma = np.sqrt((centered_x ** 2).mean(axis=red, keepdims=True) + eps)
    return centered_x / sigma * g + b, sigma


def norm_oracle(rule, x, g, b, red, eps, mask, centered=True):
    y, sigma = layer_norm_forward(x, g, b, red, eps, centered)
    r = y * mask
    if isinstance(rule, Pass):
        return r
    gs = g * r / incr(y - (b if rule.zero_bias else 0), rule.epsilon)
    if centered:
        gs = gs - gs.mean(axis=red, keepdims=True)
    return x * gs / sigma


NORM_RULES = {"lrp0": LRP0(), "epsilon": Epsilon(), "epsilon_zero_bias": Epsilon(zero_bias=True), "pass": Pass()}


@pytest.mark.parametrize("rule_id", list(NORM_RULES))
@pytest.mark.parametrize("x_shape,axis", [((6,), -1), ((2, 5), -1), ((2, 5), 1)])
def test_layernorm_with_sigma_constant(x_shape, axis, rule_id):
    """x -> LayerNormalization(g, b) -> y under each norm rule (module section above); the
    default (no norm predicate) is Epsilon(1e-6)."""
    rng = np.random.default_rng(3)
    rule = NORM_RULES[rule_id]
    first = axis % (len(x_shape) + 1)          # the first normalized axis of (N, *x_shape)
    norm_shape = x_shape[first - 1:]
    params = {"g": rng.normal(size=norm_shape), "b": rng.normal(size=norm_shape)}
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln", axis=axis, epsilon=1e-5)
    ex = lrp_onnx.Explainer(model_of([node], x_shape, x_shape, params), Composite(((Family("norm"), rule),)))
    assert ex.rules == {"ln": rule}
    x = rng.normal(size=(2, *x_shape)).astype(np.float32)
    mask = rng.normal(size=x.shape)
    res = ex.explain(x, target=mask.astype(np.float32))
    xs = x.astype(np.float64)
    red = tuple(range(first, 1 + len(x_shape)))
    g, b = (params[k].astype(np.float32).astype(np.float64) for k in ("g", "b"))
    y, _ = layer_norm_forward(xs, g, b, red, 1e-5)
    assert np.abs(y).min() > 1e-3, "ill-conditioned data"
    assert_close(res.output, y, "forward")
    expected = norm_oracle(rule, xs, g, b, red, 1e-5, mask)
    assert_close(res.relevance, expected, "R_x")
    if not isinstance(rule, Pass):   # the tolerance rejects the identity and the uncentered rule
        for wrong in (y * mask, xs * g * (y * mask) / incr(y, 1e-6) / layer_norm_forward(xs, g, b, red, 1e-5)[1]):
            assert np.abs(res.relevance - wrong).max() > 1e-2 * np.abs(expected).max()


def test_layernorm_default_rule_and_rejected_rules():
    """Without a norm predicate a LayerNormalization gets Epsilon(1e-6); Gamma would modify
    the weights of a layer whose statistics are held constant: a clear error."""
    params = {"g": np.ones(4), "b": np.zeros(4)}
    model = model_of([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln")], (4,), (4,), params)
    assert lrp_onnx.Explainer(model, Composite(((Family("all"), LRP0()),))).rules == {"ln": Epsilon(1e-6)}
    with pytest.raises(lrp_onnx.errors.CompositeError, match=r"LayerNormalization 'ln' \(family 'norm'\) takes LRP0"):
        lrp_onnx.Explainer(model, Composite(((Family("norm"), Gamma(0.25)),)))


@pytest.mark.parametrize("opset,domain", [(23, ""), (17, "ai.lrp_onnx")])
@pytest.mark.parametrize("rule_id", ["epsilon", "pass"])
def test_rmsnorm_with_rms_constant(opset, domain, rule_id):
    """x -> RMSNormalization(g) -> Gemm: R at the RMSNorm input is x g s / rms (Epsilon: R y /
    incr(y), the identity up to the stabilizer; Pass: exactly R). Below opset 23 the node is
    canonicalize/rmsnorm.py's private one, with its model-local function."""
    from lrp_onnx.canonicalize.rmsnorm import _function
    rng = np.random.default_rng(4)
    rule = NORM_RULES[rule_id]
    params = {"g": rng.uniform(0.5, 1.5, size=5), "W": rng.normal(size=(3, 5))}
    nodes = [helper.make_node("RMSNormalization", ["x", "g"], ["h"], name="rms", domain=domain, axis=-1, epsilon=1e-5),
             helper.make_node("Gemm", ["h", "W"], ["y"], name="fc", transB=1)]
    model = model_of(nodes, (5,), (3,), params, opset=opset)
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
        model.functions.append(_function(opset))
    ex = lrp_onnx.Explainer(model, Composite(((Family("norm"), rule), (Family("all"), LRP0()))))
    x = rng.normal(size=(3, 5)).astype(np.float32)
    mask = rng.normal(size=(3, 3))
    res = ex.explain(x, target=mask.astype(np.float32), layers=("h",))
    xs = x.astype(np.float64)
    g = params["g"].astype(np.float32).astype(np.float64)
    h, rms = layer_norm_forward(xs, g, 0.0, (1,), 1e-5, centered=False)
    w = params["W"].astype(np.float32).astype(np.float64)
    z = h @ w.T
    r_h = h * (((z * mask) / incr(z, 1e-9)) @ w)
    assert_close(res.layers["h"], r_h, "R_h")
    expected = r_h if isinstance(rule, Pass) else xs * g * (r_h / incr(h, 1e-6)) / rms
    assert_close(res.relevance, expected, "R_x")
    gs = g * r_h / incr(h, 1e-6)   # the wrong variant: LayerNorm's centering on an RMSNorm
    assert np.abs(res.relevance - xs * (gs - gs.mean(axis=1, keepdims=True)) / rms).max() > 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
def test_norm_gradients_match_autograd(op):
    """The gradient composite through LayerNorm / RMSNorm (statistics NOT held constant)
    against torch.autograd; float32 both sides, 1e-4 of max|grad|."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    g, b = rng.uniform(0.5, 1.5, size=5), rng.normal(size=5)
    inputs = ["x", "g", "b"] if op == "LayerNormalization" else ["x", "g"]
    params = {"g": g, "b": b} if op == "LayerNormalization" else {"g": g}
    node = helper.make_node(op, inputs, ["y"], name="norm", axis=-1, epsilon=1e-5)
    model = model_of([node], (3, 5), (3, 5), params, opset=23)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    mask = rng.normal(size=x.shape).astype(np.float32)
    got = lrp_onnx.Explainer(model, "gradient").explain(x, target=mask).relevance
    xt = torch.from_numpy(x).requires_grad_()
    gt = torch.from_numpy(g.astype(np.float32))
    if op == "LayerNormalization":
        y = torch.nn.functional.layer_norm(xt, (5,), gt, torch.from_numpy(b.astype(np.float32)), eps=1e-5)
    else:
        y = xt / torch.sqrt((xt ** 2).mean(-1, keepdim=True) + 1e-5) * gt
    (y * torch.from_numpy(mask)).sum().backward()
    expected = xt.grad.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_passes_relevance_and_its_gradient_matches_autograd(p):
    """y = x / ||x||_p (a sentence embedding's normalization): LRP passes R through (the norm a
    constant of the sample), so with a mask R_x = y * mask; the gradient composite (the norm
    NOT constant) against torch.autograd in float64. Tolerance 1e-5 of max: one reduction of 5
    terms and one division in float32 (< 10 ulp)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    node = helper.make_node("LpNormalization", ["x"], ["y"], name="lp", axis=-1, p=p)
    model = model_of([node], (3, 5), (3, 5), {})
    x = signed_uniform(rng, (2, 3, 5)).astype(np.float32)
    mask = rng.normal(size=x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    y = x64 / np.linalg.norm(x64, ord=p, axis=-1, keepdims=True)
    assert_close(lrp_onnx.Explainer(model, "epsilon_plus").explain(x, target=mask).relevance, y * mask, "LRP")
    got = lrp_onnx.Explainer(model, "gradient").explain(x, target=mask).relevance
    xt = torch.from_numpy(x64).requires_grad_()
    (torch.nn.functional.normalize(xt, p=p, dim=-1) * torch.from_numpy(mask.astype(np.float64))).sum().backward()
    expected = xt.grad.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(AssertionError):   # the norm held constant is not the gradient
        np.testing.assert_allclose(got, mask / np.linalg.norm(x64, ord=p, axis=-1, keepdims=True), rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())
