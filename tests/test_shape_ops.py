"""Shape ops and activations move relevance without changing it: the inverse shape operation
(Reshape back, inverse Transpose) and pass-through for monotone activations."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx

LRP0_ALL = {"rules": [{"where": "all", "rule": {"rule": "LRP0"}}]}


def test_transpose_reshape_unsqueeze_squeeze_are_undone():
    """x (N,2,3,4) -> Transpose(0,2,3,1) -> Reshape(N,24) -> Unsqueeze(2) -> Squeeze(2) -> Gemm.
    LRP-0 of the Gemm on the re-indexed input, mapped back by the inverse permutation
    (dense numpy formula; float32 vs float64, 1e-5 of the scale)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 24)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t", perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["r"], name="r"),
             helper.make_node("Unsqueeze", ["r", "axis"], ["u"], name="u"),
             helper.make_node("Squeeze", ["u", "axis"], ["s"], name="s"),
             helper.make_node("Gemm", ["s", "W"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(np.array([-1, 24], np.int64), "shape"),
                               numpy_helper.from_array(np.array([2], np.int64), "axis"), numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
    res = lrp_onnx.Explainer(model, composite=LRP0_ALL).explain(x, target=np.ones((3, 5), np.float32))

    flat = x.transpose(0, 2, 3, 1).reshape(3, 24).astype(np.float64)
    z = flat @ w.T
    r_flat = flat * ((z / z) @ w)
    expected = r_flat.reshape(3, 3, 4, 2).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Softplus", "HardSwish", "Gelu", "Erf", "Clip"])
def test_activations_pass_relevance_unchanged(activation):
    """R at the activation's input equals R at its output (the overview's convention)."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1", transB=1),
             helper.make_node(activation, ["h"], ["a"], name="act"),
             helper.make_node("Gemm", ["a", "W2"], ["y"], name="fc2", transB=1)]
    opset = 20 if activation == "Gelu" else 17
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "W1"),
                               numpy_helper.from_array(rng.normal(size=(3, 6)).astype(np.float32), "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    res = lrp_onnx.Explainer(model, composite=LRP0_ALL).explain(rng.normal(size=(2, 4)).astype(np.float32), layers=("h", "a"))
    np.testing.assert_array_equal(res.layers["h"], res.layers["a"])
    assert np.abs(res.layers["a"]).sum() > 0


def cast_model(to):
    """x -> Cast(to) -> Cast(float) -> Gemm."""
    w = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["c"], name="cast", to=to), helper.make_node("Cast", ["c"], ["d"], name="back", to=TensorProto.FLOAT),
             helper.make_node("Gemm", ["d", "W"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_float_cast_passes_relevance_and_another_cast_is_an_error():
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    res = lrp_onnx.Explainer(cast_model(TensorProto.FLOAT), composite=LRP0_ALL).explain(x, layers=("c", "d"))
    np.testing.assert_array_equal(res.layers["c"], res.layers["d"])
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-5)   # LRP-0, no bias: conservative
    with pytest.raises(lrp_onnx.ModelError, match="changes the element type"):
        lrp_onnx.Explainer(cast_model(TensorProto.DOUBLE), composite=LRP0_ALL)
