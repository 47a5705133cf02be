"""canonicalize/group_norm.py: InstanceNormalization and GroupNormalization (opset 18's per-group
and opset 21's per-channel parameters) become Reshape -> LayerNormalization -> [Reshape] -> Mul ->
Add -> Reshape; onnxruntime's outputs are unchanged (tests/test_canonicalize.py's check_pass, 1e-5 of the
scale), and the relevance is the norm family's rule with sigma held constant, against a dense
numpy formula (float64):

    x (N, C, H, W) -> GroupNorm(G) -> Flatten -> Gemm(w, no bias), LRP-0 everywhere, R_out = y_t:
    R_f = f w[t];  s = gamma R_f / stab(y)  (stab: the bias Add's z + 1e-6 sgn z);
    R_x = x (s - mean_g(s)) / sigma_g,  sigma_g = sqrt(var_g(x) + eps)  (mean and var over a group)

and, with beta = 0, sum R_x = y_t exactly (conservation: sum_g x (s - mean_g s) / sigma_g =
sum_g n s, n = (x - mu_g) / sigma_g). The gradient composite is checked against torch autograd
of torch.nn.functional.group_norm. Tolerance: tests/tolerances.shallow_bound (depth 3, fan-in
C H W = 36); the formula with the statistics over the whole sample instead of a group is
rejected by it.

lrp_onnx.load rewrites a GroupNormalization before checking the file (onnx's checker calls
version 18 deprecated, onnx's strict shape inference infers nothing for version 21), so the models
go to the Explainer as written.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.canonicalize import normalize_groups
from lrp_onnx.errors import UnsupportedOpError
from lrp_onnx.load import infer_shapes

from handler_models import LRP0_ALL
from test_canonicalize import check_pass, ops
from tolerances import shallow_bound

RNG = np.random.default_rng(15)
C, H, W, K, EPS = 4, 3, 3, 3, 1e-5


def norm_model(op, groups, opset, gamma, beta, spatial=(H, W), head=True):
    """x (N, C, *spatial) -> op -> [Flatten -> Gemm]; gamma, beta as the op's version takes them."""
    attrs = {"epsilon": EPS} | ({"num_groups": groups} if op == "GroupNormalization" else {})
    nodes = [helper.make_node(op, ["x", "gamma", "beta"], ["n" if head else "y"], name="norm", **attrs)]
    inits = {"gamma": gamma, "beta": beta}
    if head:
        inits["w"] = RNG.normal(size=(K, C * H * W))
        nodes += [helper.make_node("Flatten", ["n"], ["f"], name="flat"),
                  helper.make_node("Gemm", ["f", "w"], ["y"], name="head", transB=1)]
    y_shape = ["N", K] if head else ["N", C, *spatial]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if op != "GroupNormalization":   # onnx checks and infers neither GroupNormalization (module doc)
        onnx.checker.check_model(proto)
        infer_shapes(proto)
    return proto


def per_channel(values, groups, opset, op):
    """The op's parameter (per group for GroupNormalization-18) as one value per channel."""
    per_group = op == "GroupNormalization" and opset < 21
    return np.repeat(values, C // groups) if per_group else values


CASES = {   # name: (op, groups, opset, parameter size)
    "instance_norm": ("InstanceNormalization", C, 17, C),
    "group_norm_18_per_group": ("GroupNormalization", 2, 18, 2),
    "group_norm_21_per_channel": ("GroupNormalization", 2, 21, C),
    "group_norm_21_one_group": ("GroupNormalization", 1, 21, C),
}


def params(size, zero_beta=False):
    gamma = RNG.uniform(0.5, 1.5, size) * RNG.choice([-1, 1], size)
    return gamma, np.zeros(size) if zero_beta else RNG.normal(size=size)


@pytest.mark.parametrize("case", list(CASES))
def test_the_pass_keeps_the_outputs(case):
    op, groups, opset, size = CASES[case]
    proto = norm_model(op, groups, opset, *params(size), head=False)
    after = check_pass(normalize_groups, proto, RNG.normal(size=(2, C, H, W)).astype(np.float32))
    rows = ["Reshape"] if size != groups else []
    assert ops(after) == ["Reshape", "LayerNormalization"] + rows + ["Mul", "Add", "Shape", "Reshape"]


def test_neutral_parameters_add_no_mul_or_add():
    proto = norm_model("InstanceNormalization", C, 17, np.ones(C), np.zeros(C), head=False)
    after = check_pass(normalize_groups, proto, RNG.normal(size=(2, C, H, W)).astype(np.float32))
    assert ops(after) == ["Reshape", "LayerNormalization", "Shape", "Reshape"]


def oracle(x, w, gamma_c, beta_c, groups, target, whole_sample=False):
    x64 = x.astype(np.float64)
    g = x64.reshape(len(x), 1 if whole_sample else groups, -1)
    mu, sigma = g.mean(-1, keepdims=True), np.sqrt(g.var(-1, keepdims=True) + EPS)
    shape = (1, C, 1, 1)
    y = ((g - mu) / sigma).reshape(x.shape) * gamma_c.reshape(shape) + beta_c.reshape(shape)
    r_f = y.reshape(len(x), -1) * w[target]
    s = gamma_c.reshape(shape) * r_f.reshape(x.shape) / (y + 1e-6 * np.where(y >= 0, 1, -1))
    s = s.reshape(g.shape)
    return (g * (s - s.mean(-1, keepdims=True)) / sigma).reshape(x.shape)


def explained(case, zero_beta=False, composite=LRP0_ALL):
    op, groups, opset, size = CASES[case]
    gamma, beta = params(size, zero_beta)
    proto = norm_model(op, groups, opset, gamma, beta)
    w = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "w")).astype(np.float64)
    x, target = RNG.normal(size=(2, C, H, W)).astype(np.float32), np.array([0, 2])
    res = lrp_onnx.Explainer(proto, composite).explain(x, target=target)
    return res, x, w, per_channel(gamma, groups, opset, op), per_channel(beta, groups, opset, op), groups, target


@pytest.mark.parametrize("case", [c for c in CASES if c != "group_norm_18_per_group"])
def test_relevance_is_the_norm_rule_with_sigma_constant(case):
    res, x, w, gamma, beta, groups, target = explained(case)
    want = oracle(x, w, gamma, beta, groups, target)
    bound = shallow_bound(3, C * H * W, np.abs(want).max())
    assert np.abs(res.relevance - want).max() <= bound
    if groups > 1:   # the statistics of the whole sample are another function
        assert np.abs(res.relevance - oracle(x, w, gamma, beta, groups, target, whole_sample=True)).max() > bound


@pytest.mark.parametrize("case", ["instance_norm", "group_norm_21_per_channel"])
def test_lrp0_conserves_without_a_shift(case):
    res, *_ = explained(case, zero_beta=True)
    total = res.relevance.reshape(2, -1).sum(1)
    np.testing.assert_allclose(total, res.total, rtol=0, atol=shallow_bound(3, C * H * W, np.abs(res.total).max()))


@pytest.mark.parametrize("case", ["instance_norm", "group_norm_21_one_group"])
def test_gradient_matches_torch_autograd(case):
    res, x, w, gamma, beta, groups, target = explained(case, composite="gradient")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    n = torch.nn.functional.group_norm(xt, groups, torch.tensor(gamma), torch.tensor(beta), eps=EPS)
    score = (n.reshape(2, -1) @ torch.tensor(w).T)[torch.arange(2), torch.tensor(target)].sum()
    want = torch.autograd.grad(score, xt)[0].numpy()
    assert np.abs(res.relevance - want).max() <= shallow_bound(3, C * H * W, np.abs(want).max())


def test_dynamic_spatial_sizes_keep_the_outputs():
    proto = norm_model("InstanceNormalization", C, 17, *params(C), spatial=("H", "W"), head=False)
    check_pass(normalize_groups, proto, RNG.normal(size=(2, C, 5, 2)).astype(np.float32))


def test_a_computed_scale_is_left_alone_and_refused_by_name():
    proto = norm_model("InstanceNormalization", C, 17, *params(C), head=False)
    proto.graph.node.insert(0, helper.make_node("Abs", ["gamma"], ["gamma_abs"], name="abs"))
    proto.graph.node[1].input[1] = "gamma_abs"
    assert normalize_groups(proto) is False
    with pytest.raises(UnsupportedOpError, match="InstanceNormalization"):
        lrp_onnx.Explainer(proto, LRP0_ALL)
