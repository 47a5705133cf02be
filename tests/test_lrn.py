"""ops/normalization.py's LRN (and its VJP in ops/gradient.py) against dense formulas.

Model: x (N, C, H, W) -> LRN(size, alpha, beta, bias) -> Flatten -> Gemm(w, no bias). ONNX's LRN:
y_c = x_c D_c^-beta, D_c = bias + alpha / size * sum_{i = c - floor((size-1)/2)}^{c + ceil((size-1)/2)} x_i^2
(zero outside [0, C)). Its relevance holds D constant (the norm family's reading), so it passes
element-wise: with R_f = f w[t] from the Gemm (LRP-0),

    LRP0:     R_x = R_f                 (sum R_x = y_t: conservation)
    Epsilon:  R_x = R_f y / incr(y)     (the default rule of the family, 1e-6)

The gradient composite is checked against torch autograd (float64) of the formula above written
in torch; the gradient with D held constant (G d, no cross term) is rejected by the same
tolerance. onnxruntime runs odd sizes only. Tolerance:
tests/tolerances.shallow_bound (depth 3, fan-in 30 = C H W).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx.errors import CompositeError
from lrp_onnx.rules import LRP0, ZPlus

from handler_models import make_model
from tolerances import shallow_bound

RNG = np.random.default_rng(12)
C, H, W, K = 5, 2, 3, 3
ALPHA, BETA, BIAS = 0.6, 0.75, 1.5


def lrn_model(size):
    w = RNG.normal(size=(K, C * H * W))
    nodes = [helper.make_node("LRN", ["x"], ["n"], name="lrn", size=size, alpha=ALPHA, beta=BETA, bias=BIAS),
             helper.make_node("Flatten", ["n"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="head", transB=1)]
    return make_model(nodes, (C, H, W), (K,), {"w": w}), w.astype(np.float32).astype(np.float64)


def lrn_torch(x, size):
    """ONNX's LRN in torch."""
    before = (size - 1) // 2
    padded = torch.nn.functional.pad(x * x, (0, 0, 0, 0, before, size - 1 - before))
    window = sum(padded[:, k:k + x.shape[1]] for k in range(size))
    return x * (BIAS + ALPHA / size * window) ** -BETA


def inputs():
    return RNG.normal(size=(2, C, H, W)).astype(np.float32), np.array([0, 2])


@pytest.mark.parametrize("size", [3, 5])
def test_lrp0_passes_relevance_element_wise_and_conserves(size):
    proto, w = lrn_model(size)
    x, target = inputs()
    res = lrp_onnx.Explainer(proto, Composite(((Family("norm"), LRP0()), (Family("all"), LRP0())))).explain(x, target=target)
    y = lrn_torch(torch.tensor(x, dtype=torch.float64), size).numpy()
    np.testing.assert_allclose(res.output, y.reshape(2, -1) @ w.T, rtol=0, atol=shallow_bound(2, C * H * W, np.abs(res.output).max()))
    want = (y.reshape(2, -1) * w[target]).reshape(x.shape)
    bound = shallow_bound(3, C * H * W, np.abs(want).max())
    assert np.abs(res.relevance - want).max() <= bound
    np.testing.assert_allclose(res.relevance.reshape(2, -1).sum(1), res.total, rtol=0,
                               atol=shallow_bound(3, C * H * W, np.abs(res.total).max()))
    assert np.abs(res.relevance - x * w[target].reshape(x.shape)).max() > bound   # R_x is not x w: d counts


def test_the_default_rule_is_epsilon():
    proto, w = lrn_model(3)
    x, target = inputs()
    res = lrp_onnx.Explainer(proto, Composite(((Family("all"), LRP0()),))).explain(x, target=target)
    y = lrn_torch(torch.tensor(x, dtype=torch.float64), 3).numpy()
    want = (y.reshape(2, -1) * w[target]).reshape(x.shape) * y / (y + 1e-6 * np.where(y >= 0, 1, -1))
    assert np.abs(res.relevance - want).max() <= shallow_bound(3, C * H * W, np.abs(want).max())


@pytest.mark.parametrize("size", [3, 5])
def test_gradient_matches_torch_autograd(size):
    proto, w = lrn_model(size)
    x, target = inputs()
    got = lrp_onnx.Explainer(proto, "gradient").explain(x, target=target).relevance

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = lrn_torch(xt, size)
    score = (y.reshape(2, -1) @ torch.tensor(w).T)[torch.arange(2), torch.tensor(target)]
    want = torch.autograd.grad(score.sum(), xt)[0].numpy()
    bound = shallow_bound(3, C * H * W, np.abs(want).max())
    assert np.abs(got - want).max() <= bound
    d_constant = w[target].reshape(x.shape) * (y / xt).detach().numpy()   # G d: the denominator's derivative left out
    assert np.abs(got - d_constant).max() > bound


def test_a_rule_that_modifies_the_input_is_refused():
    proto, _ = lrn_model(3)
    with pytest.raises(CompositeError, match="LRN 'lrn' .family 'norm'. takes LRP0, Epsilon or Pass"):
        lrp_onnx.Explainer(proto, Composite(((Family("norm"), ZPlus()), (Family("all"), LRP0()))))
