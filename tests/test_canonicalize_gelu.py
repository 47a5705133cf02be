"""canonicalize/gelu.py: the tanh GELU written as primitives (torch's x * Mul(x, x) cube, or
Pow(x, 3) with the 0.5 on x first) becomes Gelu(approximate="tanh") (opset >= 20) or the private
GeluTanh with its model-local function; onnxruntime's outputs are unchanged (1e-5 of their
scale), the relevance passes through it unchanged (identity rule: R_x = R = y * mask, to 1e-5 of
its scale: it is the same float32 y), and its gradient matches the derivative written here
(float64, to 1e-4 of its scale: float32 tanh and products).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx.canonicalize import fuse_gelu_tanh
from lrp_onnx.canonicalize.private import DOMAIN

from handler_models import LRP0_ALL
from test_canonicalize import check_pass, ops
from test_canonicalize_layernorm import build

C, K = math.sqrt(2 / math.pi), 0.044715


def tanh_gelu(cube="torch", half_first=False, opset=17, extra_use=False):
    init = {"c": np.array(C, np.float32), "k": np.array(K, np.float32), "one": np.array(1.0, np.float32),
            "half": np.array(0.5, np.float32), "three": np.array(3.0, np.float32)}
    nodes = ([helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x", "x2"], ["x3"])] if cube == "torch"
             else [helper.make_node("Pow", ["x", "three"], ["x3"])])
    nodes += [helper.make_node("Mul", ["k", "x3"], ["kx3"]), helper.make_node("Add", ["x", "kx3"], ["u0"]),
              helper.make_node("Mul", ["c", "u0"], ["u"]), helper.make_node("Tanh", ["u"], ["t"]),
              helper.make_node("Add", ["one", "t"], ["p"])]
    if half_first:
        nodes += [helper.make_node("Mul", ["x", "half"], ["hx"]), helper.make_node("Mul", ["hx", "p"], ["g"])]
    else:
        nodes += [helper.make_node("Mul", ["x", "p"], ["xp"]), helper.make_node("Mul", ["half", "xp"], ["g"])]
    nodes.append(helper.make_node("Add", ["g", "t"], ["y"]) if extra_use else helper.make_node("Relu", ["g"], ["y"]))
    for i, node in enumerate(nodes):
        node.name = f"n{i}"
    return build(nodes, init, opset, shape=(2, 6))


def gelu(x):
    return 0.5 * x * (1 + np.tanh(C * (x + K * x ** 3)))


def gelu_derivative(x):
    t = np.tanh(C * (x + K * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * C * (1 + 3 * K * x ** 2)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("cube,half_first", [("torch", False), ("pow", True)])
def test_fuse_gelu_tanh(cube, half_first, opset):
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32) * 2
    fused = check_pass(fuse_gelu_tanh, tanh_gelu(cube, half_first, opset), x)
    assert ops(fused) == ["Gelu" if opset >= 20 else "GeluTanh", "Relu"]
    assert fused.graph.node[0].domain == ("" if opset >= 20 else DOMAIN)


def test_a_gate_used_elsewhere_is_not_fused():
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    check_pass(fuse_gelu_tanh, tanh_gelu(extra_use=True), x, expect_changed=False)


@pytest.mark.parametrize("opset", [17, 20])
def test_relevance_passes_and_gradient(opset):
    rng = np.random.default_rng(2)
    model = tanh_gelu("pow", True, opset)
    x = (rng.normal(size=(3, 6)) * 2).astype(np.float32)
    mask = rng.normal(size=(3, 6))
    res = lrp_onnx.Explainer(model, LRP0_ALL).explain(x, target=mask.astype(np.float32))
    y = np.maximum(gelu(x.astype(np.float64)), 0)
    np.testing.assert_allclose(res.relevance, y * mask, rtol=1e-5, atol=1e-5 * np.abs(y * mask).max())
    grad = lrp_onnx.Explainer(model, "gradient").explain(x, target=mask.astype(np.float32)).relevance
    expected = mask * (gelu(x.astype(np.float64)) > 0) * gelu_derivative(x.astype(np.float64))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
