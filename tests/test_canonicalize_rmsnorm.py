"""canonicalize/rmsnorm.py: Llama's RMSNorm as torch exports it (Cast to float32 around it,
Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul/Mul(w), or Div forms) becomes one RMSNormalization:
ONNX's at opset 23, below it the ``ai.lrp_onnx`` node with its model-local function. The
outputs in onnxruntime are unchanged (the canonical model and the explainer run in plain
onnxruntime, which inlines the function), and the explainer gives the same relevance as for the
opset-23 node; Keras' RMSNormalization as tf2onnx writes it (hand-built in that spelling) is
fused too. Tolerance as tests/test_canonicalize_layernorm.py.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.canonicalize import drop_noop_casts, fuse_rmsnorm, global_pool_to_reduce_mean
from lrp_onnx.canonicalize.private import DOMAIN as PRIVATE_DOMAIN

from test_canonicalize import check_pass, ops
from test_canonicalize_layernorm import build

RNG = np.random.default_rng(1)
G = RNG.uniform(0.5, 1.5, size=5).astype(np.float32)


def llama_rmsnorm(divide="Reciprocal", opset=17, extra_use=False):
    """x -> Cast -> Pow(2) -> ReduceMean(-1) -> Add(eps) -> Sqrt -> (Reciprocal | Div(1, .)) ->
    Mul(x, .) -> Cast -> Mul(w, .) -> Relu, or Div(x, Sqrt) for ``divide="Div"``."""
    init = {"two": np.array(2.0, np.float32), "eps": np.array(1e-6, np.float32), "one": np.array(1.0, np.float32), "w": G}
    if opset >= 18:
        init["axes"] = np.array([-1], np.int64)
    mean = (helper.make_node("ReduceMean", ["sq", "axes"], ["v"], keepdims=1) if opset >= 18
            else helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1], keepdims=1))
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Pow", ["xf", "two"], ["sq"]), mean,
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"])]
    if divide == "Div":
        nodes.append(helper.make_node("Div", ["xf", "s"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["s"], ["r"]) if divide == "Reciprocal"
                  else helper.make_node("Div", ["one", "s"], ["r"]), helper.make_node("Mul", ["xf", "r"], ["n"])]
    nodes += [helper.make_node("Cast", ["n"], ["nc"], to=TensorProto.FLOAT), helper.make_node("Mul", ["w", "nc"], ["h"]),
              helper.make_node("Add" if extra_use else "Relu", ["h", "s"] if extra_use else ["h"], ["y"])]
    for i, node in enumerate(nodes):
        node.name = f"n{i}"
    return build(nodes, init, opset)


def canonical(proto, x):
    proto = check_pass(drop_noop_casts, proto, x)
    return check_pass(fuse_rmsnorm, proto, x)


@pytest.mark.parametrize("divide", ["Reciprocal", "DivOne", "Div"])
@pytest.mark.parametrize("opset", [17, 18, 23])
def test_fuse_rmsnorm_keeps_outputs(divide, opset):
    x = RNG.normal(size=(3, 2, 5)).astype(np.float32)
    fused = canonical(llama_rmsnorm(divide, opset), x)
    assert ops(fused) == ["RMSNormalization", "Relu"]
    node = fused.graph.node[0]
    assert node.domain == ("" if opset >= 23 else PRIVATE_DOMAIN)
    assert [f.name for f in fused.functions] == ([] if opset >= 23 else ["RMSNormalization"])


def test_an_rms_used_elsewhere_is_not_fused():
    x = RNG.normal(size=(3, 2, 5)).astype(np.float32)
    proto = check_pass(drop_noop_casts, llama_rmsnorm(extra_use=True), x)
    check_pass(fuse_rmsnorm, proto, x, expect_changed=False)


def test_relevance_and_the_explainer_in_plain_onnxruntime():
    """The opset-17 model (private node + function) and the opset-23 one give the same
    relevance, and the saved explainer of the opset-17 one runs in a bare onnxruntime session."""
    x = RNG.normal(size=(3, 2, 5)).astype(np.float32)
    mask = np.ones((3, 2, 5), np.float32)
    results = {}
    for opset in (17, 23):
        ex = lrp_onnx.Explainer(llama_rmsnorm(opset=opset), "attnlrp")
        assert any(n.op_type == "RMSNormalization" for n in ex.forward_model.graph.node)
        results[opset] = ex.explain(x, target=mask).relevance
    np.testing.assert_allclose(results[17], results[23], rtol=1e-4, atol=1e-4 * np.abs(results[23]).max())
    compiled = lrp_onnx.compile.compile_explainer(llama_rmsnorm(opset=17), "attnlrp")
    session = ort.InferenceSession(compiled.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: (x if i.name == "x" else np.full((3, 2, 5), np.nan, np.float32)) for i in session.get_inputs()}
    outputs = session.run(None, feeds)
    assert all(np.all(np.isfinite(o)) for o in outputs)


# --------------------------------------------------------------------------- Keras (tf2onnx)
# keras.layers.RMSNormalization is x * rsqrt(mean(x^2) + eps) * w; tf2onnx 1.17 writes it as
# Mul(x, x) -> ReduceMean (GlobalAveragePool for the last axis of a rank-3 tensor, which
# canonicalize/global_pool.py turns back) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(., w) ->
# Mul(x, .) (seen in exports of keras 3.15 models: the scale multiplies the reciprocal).


def keras_rmsnorm(mean="GlobalAveragePool", x_first=True):
    init = {"eps": np.array(1e-6, np.float32), "w": G}
    mean_node = (helper.make_node("GlobalAveragePool", ["sq"], ["v"]) if mean == "GlobalAveragePool"
                 else helper.make_node("ReduceMean", ["sq"], ["v"], axes=[2], keepdims=1))
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), mean_node, helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Reciprocal", ["s"], ["r"]),
             helper.make_node("Mul", ["r", "w"], ["rw"]),
             helper.make_node("Mul", ["x", "rw"] if x_first else ["rw", "x"], ["n"]), helper.make_node("Relu", ["n"], ["y"])]
    for i, node in enumerate(nodes):
        node.name = f"k{i}"
    return build(nodes, init, 17)


@pytest.mark.parametrize("mean, x_first", [("GlobalAveragePool", True), ("ReduceMean", False)])
def test_fuse_the_keras_spelling(mean, x_first):
    x = RNG.normal(size=(3, 2, 5)).astype(np.float32)
    proto = keras_rmsnorm(mean, x_first)
    if mean == "GlobalAveragePool":
        proto = check_pass(global_pool_to_reduce_mean, proto, x)
    fused = check_pass(fuse_rmsnorm, proto, x)
    assert ops(fused) == ["RMSNormalization", "Relu"]
    scale = next(t for t in fused.graph.initializer if t.name == fused.graph.node[0].input[1])
    np.testing.assert_array_equal(numpy_helper.to_array(scale), G)
