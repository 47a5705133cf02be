"""canonicalize/layernorm.py (and casts.py): decomposed layer normalizations, in the spellings
exporters write, become one LayerNormalization; onnxruntime's outputs are unchanged, and the
explainer gives the same relevance as for the model written with the fused node.

Tolerance: the fused LayerNorm kernel sums in another order than the primitives; float32
outputs agree to 1e-5 relative to their scale (as tests/test_canonicalize.py), relevance
(attnlrp, float32 on both sides) to 1e-4 relative to its scale.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.canonicalize import drop_noop_casts, fuse_layernorm
from lrp_onnx.load import infer_shapes

from test_canonicalize import check_pass, ops

RNG = np.random.default_rng(0)
W, B = RNG.normal(size=(2, 5)).astype(np.float32), RNG.normal(size=(2, 5)).astype(np.float32)


def build(nodes, initializers, opset=17, shape=(3, 2, 5)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *shape[1:]])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto)
    infer_shapes(proto)
    return proto


def reduce_mean(x, out, axes, opset):
    if opset >= 18:
        return helper.make_node("ReduceMean", [x, "axes"], [out], keepdims=1)
    return helper.make_node("ReduceMean", [x], [out], axes=axes, keepdims=1)


def decomposed(square="Pow", divide="Div", guard=False, affine=True, axes=(-1,), opset=17, extra_use=False, cast=False):
    """LayerNorm as primitives; the knobs pick the spelling (see the module doc of the pass)."""
    init = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32), "zero": np.array(0.0, np.float32),
            "w": W[-1] if axes == (-1,) else W, "b": B[-1] if axes == (-1,) else B}
    if opset >= 18:
        init["axes"] = np.array(axes, np.int64)
    x = "x"
    nodes = []
    if cast:
        nodes.append(helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT))
        x = "xc"
    nodes += [reduce_mean(x, "m", list(axes), opset), helper.make_node("Sub", [x, "m"], ["d"]),
              helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "Pow" else helper.make_node("Mul", ["d", "d"], ["sq"]),
              reduce_mean("sq", "v", list(axes), opset)]
    v = "v"
    if guard:
        nodes.append(helper.make_node("Max", ["v", "zero"], ["vg"]))
        v = "vg"
    nodes += [helper.make_node("Add", [v, "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"])]
    if divide == "Div":
        nodes.append(helper.make_node("Div", ["d", "s"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["s"], ["rs"]), helper.make_node("Mul", ["rs", "d"], ["n"])]
    last = "n"
    if affine:
        nodes += [helper.make_node("Mul", ["n", "w"], ["nw"]), helper.make_node("Add", ["nw", "b"], ["y0"])]
        last = "y0"
    if extra_use:
        nodes += [helper.make_node("Add", [last, "d"], ["y"])]
    else:
        nodes += [helper.make_node("Relu", [last], ["y"])]
    for i, node in enumerate(nodes):
        node.name = f"n{i}"
    return build(nodes, init, opset)


SPELLINGS = {
    "torch_opset11": dict(),
    "mul_reciprocal_no_affine": dict(square="Mul", divide="Reciprocal", affine=False),
    "jax_max_guard": dict(guard=True),
    "opset18_two_axes": dict(axes=(-2, -1), opset=18),
    "cast_around": dict(cast=True),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_fuse_layernorm_keeps_outputs(spelling):
    proto = decomposed(**SPELLINGS[spelling])
    x = RNG.normal(size=(3, 2, 5)).astype(np.float32)
    if SPELLINGS[spelling].get("cast"):
        proto = check_pass(drop_noop_casts, proto, x)
        assert "Cast" not in ops(proto)
    fused = check_pass(fuse_layernorm, proto, x)
    assert ops(fused) == ["LayerNormalization", "Relu"]
    node = fused.graph.node[0]
    axis = next(a.i for a in node.attribute if a.name == "axis")
    assert axis == (1 if SPELLINGS[spelling].get("axes") == (-2, -1) else 2)


def test_a_centered_tensor_used_elsewhere_is_not_fused():
    proto = decomposed(extra_use=True)
    check_pass(fuse_layernorm, proto, RNG.normal(size=(3, 2, 5)).astype(np.float32), expect_changed=False)


def test_a_positive_max_guard_is_not_fused():
    """Max(v, c) with c > 0 changes the variance: not a LayerNorm."""
    proto = decomposed(guard=True)
    next(t for t in proto.graph.initializer if t.name == "zero").CopyFrom(numpy_helper.from_array(np.array(0.5, np.float32), "zero"))
    check_pass(fuse_layernorm, proto, RNG.normal(size=(3, 2, 5)).astype(np.float32), expect_changed=False)


def test_relevance_is_the_same_as_for_the_fused_node():
    """The invariance test: the decomposed spelling and the fused node, one relevance."""
    fused = build([helper.make_node("LayerNormalization", ["x", "w", "b"], ["y0"], name="ln", axis=-1, epsilon=1e-5),
                   helper.make_node("Relu", ["y0"], ["y"], name="relu")], {"w": W[-1], "b": B[-1]})
    x = RNG.normal(size=(3, 2, 5)).astype(np.float32)
    reference = lrp_onnx.Explainer(fused, "attnlrp").explain(x, target=np.ones((3, 2, 5), np.float32)).relevance
    for spelling in ("torch_opset11", "jax_max_guard", "cast_around"):
        got = lrp_onnx.Explainer(decomposed(**SPELLINGS[spelling]), "attnlrp").explain(
            x, target=np.ones((3, 2, 5), np.float32)).relevance
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max(), err_msg=spelling)
