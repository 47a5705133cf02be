"""The faster forms of the relevance graph give the same relevance as the plain ones, and the
execution providers are checked.

* f^T of a stride-1 Conv as a Conv with the flipped kernel (ops/linear.py) against ONNX's own
  ConvTranspose, over groups, dilations and asymmetric pads;
* the generalised Gamma rule's z < 0 term left out where the relevance is provably zero at
  z <= 0 (a Relu follows; ops/propagate.py) against a dense numpy Gamma with both terms;
* winner-take-all MaxPool by MaxUnpool (disjoint windows) or ScatterElements against a
  scatter-add at onnxruntime's own MaxPool indices.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.builder import GraphBuilder
from lrp_onnx.errors import InputError
from lrp_onnx.ops.linear import flip_kernel, flipped_pads

RNG = np.random.default_rng(0)
#: float32 sums of up to a few hundred products in a different order (shallow graphs, depth
#: <= 3, fan-in <= 150: a random walk of 3 * sqrt(150) roundings of 2^-24 is 2e-6 of
#: sum|terms|, tests/tolerances.py): max error relative to max|reference| observed <= 3e-7.
#: A wrong oracle (Gamma 0.25 -> 0.3) is rejected (test_gamma_after_relu_...[rejects_a_wrong_gamma]).
RTOL = 1e-5


@pytest.mark.parametrize("c_in, c_out, kernel, pads, dilations, group", [
    (3, 4, [3, 3], [1, 1, 1, 1], [1, 1], 1),
    (4, 6, [3, 2], [2, 0, 1, 1], [2, 1], 2),
    (6, 6, [5], [1, 3], [1], 6),
    (2, 4, [1, 1], [0, 0, 0, 0], [1, 1], 1),
    (4, 2, [2, 3, 3], [1, 0, 1, 0, 2, 1], [1, 2, 1], 2),
])
def test_flipped_conv_equals_conv_transpose(c_in, c_out, kernel, pads, dilations, group):
    n = len(kernel)
    spatial = [7, 8, 6][:n]
    out = [s + pads[i] + pads[n + i] - d * (k - 1) for i, (s, k, d) in enumerate(zip(spatial, kernel, dilations))]
    as_conv = flipped_pads(kernel, pads, [1] * n, dilations, [0] * n)
    assert as_conv is not None
    w = RNG.normal(size=(c_out, c_in // group, *kernel)).astype(np.float32)
    s = RNG.normal(size=(2, c_out, *out)).astype(np.float32)
    b = GraphBuilder(17, ["s", "w"])
    flipped = b.op("Conv", ["s", flip_kernel(b, "w", w.shape, group)], "c", pads=as_conv, dilations=dilations, group=group)
    b.op("ConvTranspose", ["s", "w"], "c", pads=pads, dilations=dilations, group=group)
    plain = b.nodes[-1].output[0]
    graph = helper.make_graph(b.nodes, "t", [helper.make_tensor_value_info("s", TensorProto.FLOAT, s.shape)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in (flipped, plain)],
                              [numpy_helper.from_array(w, "w")] + b.initializers)
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got, want = session.run(None, {"s": s})
    assert got.shape == want.shape == (2, c_in, *spatial)
    assert np.abs(got - want).max() <= RTOL * np.abs(want).max()


def test_no_flipped_conv_for_strides_or_wide_pads():
    assert flipped_pads([3, 3], [1, 1, 1, 1], [2, 1], [1, 1], [0, 0]) is None
    assert flipped_pads([3], [3, 0], [1], [1], [0]) is None


def _gamma_numpy(a, w, bias, r, gamma=0.25, eps=1e-6):
    """Generalised Gamma (zennit 0.5) on a dense layer, both terms, float64."""
    def stab(z):
        return z + eps * np.where(z >= 0, 1.0, -1.0)
    ap, an = np.maximum(a, 0), np.minimum(a, 0)
    wp, wn = w + gamma * np.maximum(w, 0), w + gamma * np.minimum(w, 0)
    bp, bn = bias + gamma * np.maximum(bias, 0), bias + gamma * np.minimum(bias, 0)
    z = a @ w.T + bias
    s_pos = r * (z > 0) / stab(ap @ wp.T + bp + an @ wn.T)
    s_neg = r * (z < 0) / stab(ap @ wn.T + bn + an @ wp.T)
    return ap * (s_pos @ wp) + an * (s_pos @ wn) + ap * (s_neg @ wn) + an * (s_neg @ wp)


@pytest.mark.parametrize("oracle_gamma", [0.25, 0.3], ids=["right", "rejects_a_wrong_gamma"])
def test_gamma_after_relu_drops_the_negative_term_exactly(oracle_gamma):
    sizes = [6, 8, 7, 3]
    weights = [RNG.normal(size=(o, i)) for i, o in zip(sizes, sizes[1:])]
    biases = [RNG.normal(size=o) * 0.5 for o in sizes[1:]]
    nodes, inits, last = [], [], "x"
    for k, (w, bias) in enumerate(zip(weights, biases)):
        nodes.append(helper.make_node("Gemm", [last, f"W{k}", f"b{k}"], [f"z{k}"], name=f"fc{k}", transB=1))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{k}"), numpy_helper.from_array(bias.astype(np.float32), f"b{k}")]
        last = f"z{k}"
        if k < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [last], [f"a{k}"], name=f"relu{k}"))
            last = f"a{k}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.normal(size=(5, sizes[0])).astype(np.float32)

    ex = lrp_onnx.Explainer(model, composite={"rules": [{"where": "all", "rule": {"rule": "Gamma", "gamma": 0.25}}]})
    res = ex.explain(x, target=1)
    # only the top layer (no Relu after it) builds the z < 0 term
    assert sum(node.op_type == "Less" for node in ex.model.graph.node) == 1

    acts = [x.astype(np.float64)]
    for k, (w, bias) in enumerate(zip(weights, biases)):
        z = acts[-1] @ w.T + bias
        acts.append(np.maximum(z, 0) if k < len(weights) - 1 else z)
    r = acts[-1] * np.eye(sizes[-1])[[1]]
    for k in reversed(range(len(weights))):
        r = _gamma_numpy(acts[k], weights[k], biases[k], r, gamma=oracle_gamma)
    agrees = np.abs(res.relevance - r).max() <= RTOL * np.abs(r).max()
    assert agrees == (oracle_gamma == 0.25), np.abs(res.relevance - r).max() / np.abs(r).max()


def _dense(layer, w, bias, in_shape):
    """(the layer as a dense matrix on the flattened sample, its bias per output element)."""
    if layer == "gemm":
        return w, bias
    if layer == "matmul":   # (T, K) @ (K, M): block diagonal
        return np.kron(np.eye(in_shape[0]), w.T), np.tile(bias, in_shape[0])
    c_out, c_in, k = w.shape   # Conv1d, stride 1, pads 1
    length = in_shape[1]
    dense = np.zeros((c_out, length, c_in, length))
    for o, i, j, t in np.ndindex(c_out, c_in, k, length):
        if 0 <= t + j - 1 < length:
            dense[o, t, i, t + j - 1] = w[o, i, j]
    return dense.reshape(c_out * length, c_in * length), np.repeat(bias, length)


@pytest.mark.parametrize("oracle_gamma", [0.25, 0.3], ids=["right", "rejects_a_wrong_gamma"])
@pytest.mark.parametrize("rectified", [False, True], ids=["signed_output", "relu_after"])
@pytest.mark.parametrize("layer", ["gemm", "matmul", "conv"])
def test_gamma_on_a_signed_input_by_magnitudes(layer, rectified, oracle_gamma):
    """Gamma on a layer whose input is signed: three passes of f (ops/propagate.py,
    _gamma_by_magnitudes) against the dense numpy Gamma with all four branches per term."""
    in_shape, w_shape, op, outputs = {"gemm": ((6,), (5, 6), "Gemm", 5), "matmul": ((3, 6), (6, 5), "MatMul", 15),
                                      "conv": ((3, 7), (4, 3, 3), "Conv", 28)}[layer]
    w = RNG.normal(size=w_shape)
    # a MatMul of a 3-D input keeps no bias (canonicalize/matmul_add.py fuses only 2-D ones)
    bias = RNG.normal(size=w_shape[0]) * 0.5 if layer != "matmul" else np.zeros(w_shape[1])
    attrs = {"gemm": dict(transB=1), "matmul": {}, "conv": dict(pads=[1, 1])}[layer]
    inputs = ["x", "W"] + ([] if layer == "matmul" else ["b"])
    nodes = [helper.make_node(op, inputs, ["z"], name="layer", **attrs)]
    last = "z"
    if rectified:
        nodes.append(helper.make_node("Relu", [last], ["a"], name="relu"))
        last = "a"
    nodes.append(helper.make_node("Flatten", [last], ["y"], name="flat"))
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (("W", w), ("b", bias))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.normal(size=(4, *in_shape)).astype(np.float32)
    ex = lrp_onnx.Explainer(model, composite={"rules": [{"where": "all", "rule": {"rule": "Gamma", "gamma": 0.25}}]})
    mask = RNG.uniform(size=(4, outputs)).astype(np.float32)
    res = ex.explain(x, target=mask)
    assert sum(node.op_type == "Abs" for node in ex.model.graph.node) == 1   # the fast path, not the branches
    assert sum(node.op_type == op for node in ex.model.graph.node) <= 4      # 1 forward, V, two transposed
    dense, dense_bias = _dense(layer, w, bias, in_shape)
    a = x.reshape(len(x), -1).astype(np.float64)
    z = a @ dense.T + dense_bias
    r = (np.maximum(z, 0) if rectified else z) * mask
    expected = _gamma_numpy(a, dense, dense_bias, r, gamma=oracle_gamma).reshape(x.shape)
    error = np.abs(res.relevance - expected).max() / np.abs(expected).max()
    assert (error <= RTOL) == (oracle_gamma == 0.25), error


def test_unknown_execution_provider_is_a_clear_error():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match="NoSuchExecutionProvider.*available"):
        lrp_onnx.Explainer(model, providers=["NoSuchExecutionProvider"])
    assert lrp_onnx.Explainer(model, providers=["CPUExecutionProvider"]).explain(np.ones((1, 2), np.float32)).relevance.shape == (1, 2)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[3, 3], dilations=[2, 2]),
    dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),   # overlapping: ScatterElements
])
def test_maxpool_winner_matches_scatter_add_on_the_indices(attrs):
    """R_in = scatter-add of R_out at onnxruntime's own MaxPool Indices (MaxUnpool for
    disjoint windows)."""
    import onnx

    graph = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y"], name="mp", **attrs),
                               helper.make_node("Flatten", ["y"], ["o"], name="flat")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7, 7])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = RNG.normal(size=(3, 2, 7, 7)).astype(np.float32)
    ex = lrp_onnx.Explainer(model, composite={"rules": [{"where": "all", "rule": {"rule": "Epsilon"}}]})
    mask = RNG.uniform(size=ex.explain(x).output.shape).astype(np.float32)
    res = ex.explain(x, target=mask)

    indices_model = helper.make_model(helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("i", TensorProto.INT64, None)]),
        opset_imports=[helper.make_opsetid("", 17)])
    y, idx = ort.InferenceSession(indices_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    expected = np.zeros(x.size, np.float64)
    np.add.at(expected, idx.ravel(), (y * mask.reshape(y.shape)).ravel())
    np.testing.assert_allclose(res.relevance.ravel(), expected, rtol=1e-5, atol=1e-6)
    disjoint = attrs["strides"][0] >= attrs.get("dilations", [1])[0] * (attrs["kernel_shape"][0] - 1) + 1
    assert ("MaxUnpool" in {n.op_type for n in ex.model.graph.node}) == disjoint
