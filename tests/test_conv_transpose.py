"""lrp_onnx/ops/conv_transpose.py: ConvTranspose as a layer against a dense numpy formula.

Model: x (N, 4, 3, 3) -> ConvTranspose (stride 2, pads, output_padding, groups) -> Flatten ->
Gemm. Oracle (float64): ConvTranspose written from ONNX's definition as a loop (every input
element adds x * W[c, o, k] at output position i * stride - pad_begin + k * dilation), applied
to the unit vectors of one sample: the dense matrix M; then the rules as matrix algebra,
LRP-0/epsilon R_x = x * ((R_f / incr(M x + b)) M) with R_f = f * w[t] / incr(f . w[t]) * y[t],
and the gradient w[t] M. Tolerance: 1e-5 of max|R| (sums of at most 16 and 72 terms, a few
roundings of 2^-24, divided by |z| bounded away from zero by the positive inputs and weights
chosen below). The oracle with the output channels of W swapped (a wrong weight layout) is rejected
by it; auto_pad is refused.
"""
import numpy as np
import pytest
from onnx import helper

from handler_models import make_model
from lrp_onnx import Composite, Explainer, Family
from lrp_onnx.errors import ModelError
from lrp_onnx.rules import LRP0, Epsilon

C_IN, H, W, K = 4, 3, 3, 3
RNG = np.random.default_rng(8)
CASES = {"stride2_pads_outpad": dict(strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 1], group=1),
         "grouped_dilated": dict(strides=[1, 2], pads=[0, 0, 0, 0], dilations=[2, 1], group=2)}


def conv_transpose(x, weight, attrs):
    """ONNX ConvTranspose on one sample x (C_in, H, W), no bias."""
    (sh, sw), (dh, dw) = attrs["strides"], attrs.get("dilations", [1, 1])
    pt, pl, pb, pr = attrs["pads"]
    oph, opw = attrs.get("output_padding", [0, 0])
    group, (_, c_out_g, kh, kw) = attrs["group"], weight.shape
    out_h = (H - 1) * sh + (kh - 1) * dh + 1 - pt - pb + oph
    out_w = (W - 1) * sw + (kw - 1) * dw + 1 - pl - pr + opw
    y = np.zeros((group * c_out_g, out_h, out_w))
    c_in_g = C_IN // group
    for c in range(C_IN):
        g = c // c_in_g
        for i in range(H):
            for j in range(W):
                for a in range(kh):
                    for b in range(kw):
                        r, q = i * sh - pt + a * dh, j * sw - pl + b * dw
                        if 0 <= r < out_h and 0 <= q < out_w:
                            y[g * c_out_g:(g + 1) * c_out_g, r, q] += x[c, i, j] * weight[c, :, a, b]
    return y


def model(case, **extra):
    attrs = CASES[case]
    weight = RNG.uniform(0.1, 1.0, size=(C_IN, 2, 3, 2))
    out = conv_transpose(np.zeros((C_IN, H, W)), weight, attrs)
    params = {"wt": weight, "bt": RNG.uniform(0.1, 0.5, size=out.shape[0]), "w": RNG.uniform(0.1, 1.0, size=(K, out.size))}
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["t"], **attrs, **extra),
             helper.make_node("Flatten", ["t"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    return make_model(nodes, (C_IN, H, W), (K,), params), {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}


def oracle(case, x, p, target, rule, attrs=None):
    attrs = attrs or CASES[case]
    unit = np.eye(C_IN * H * W).reshape(-1, C_IN, H, W)
    dense = np.stack([conv_transpose(u, p["wt"], attrs).reshape(-1) for u in unit], axis=1)
    if rule == "gradient":
        return (p["w"][target] @ dense).reshape(x.shape)
    eps = 1e-9 if rule == "lrp0" else 1e-2
    flat = x.reshape(len(x), -1).astype(np.float64)
    bias = np.repeat(p["bt"], dense.shape[0] // len(p["bt"]))
    f = flat @ dense.T + bias
    y = f @ p["w"].T
    rows = np.arange(len(x))
    r_f = f * p["w"][target] * (y[rows, target] / (y[rows, target] + eps))[:, None]
    return (flat * ((r_f / (f + eps)) @ dense)).reshape(x.shape)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rule", ["lrp0", "epsilon", "gradient"])
def test_conv_transpose_matches_the_dense_formula(case, rule):
    proto, p = model(case)
    x, target = RNG.uniform(0.5, 1.5, size=(2, C_IN, H, W)).astype(np.float32), np.array([0, 2])
    composite = {"lrp0": Composite(((Family("all"), LRP0()),)), "epsilon": Composite(((Family("all"), Epsilon(1e-2)),)),
                 "gradient": "gradient"}[rule]
    got = Explainer(proto, composite).explain(x, target=target).relevance
    want = oracle(case, x, p, target, rule)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_the_tolerance_rejects_a_wrong_weight_layout():
    """The oracle with each group's output channels swapped (W[c, o] read as W[c, 1 - o])."""
    proto, p = model("stride2_pads_outpad")
    x, target = RNG.uniform(0.5, 1.5, size=(2, C_IN, H, W)).astype(np.float32), np.array([0, 2])
    got = Explainer(proto, "gradient").explain(x, target=target).relevance
    wrong = oracle("stride2_pads_outpad", x, dict(p, wt=p["wt"][:, ::-1]), target, "gradient")
    assert np.abs(got - wrong).max() > 1e-5 * np.abs(wrong).max()


def test_auto_pad_is_refused():
    proto, _ = model("grouped_dilated")
    node = proto.graph.node[0]
    del node.attribute[[a.name for a in node.attribute].index("pads")]
    node.attribute.append(helper.make_attribute("auto_pad", "VALID"))
    with pytest.raises(ModelError, match="auto_pad or output_shape"):
        Explainer(proto, Composite(((Family("all"), LRP0()),)))
