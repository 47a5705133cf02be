"""canonicalize/global_pool.py: a GlobalAveragePool of a rank-3 tensor becomes the ReduceMean
over its last axis (attribute axes below opset 18, input from 18 on), onnxruntime's outputs
unchanged (check_pass: a mean of 6 numbers, exact to float32 rounding); a rank-4 one is left
alone; and tf2onnx's LayerNorm over (N, T, D), whose means are GlobalAveragePools, is then
fused into one LayerNormalization by the full canonicalization.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lrp_onnx.canonicalize import canonicalize, global_pool_to_reduce_mean
from lrp_onnx.load import infer_shapes

from test_canonicalize import check_pass, ops, run

RNG = np.random.default_rng(5)
N = helper.make_node
X3 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])


def net(nodes, opset=17, inputs=(X3,), initializers=(), y_shape=("N", 4, 6)):
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))
    graph = helper.make_graph(nodes, "g", list(inputs), [y], list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto)
    infer_shapes(proto)
    return proto


@pytest.mark.parametrize("opset", [17, 18])
def test_a_rank3_global_average_pool_is_a_reduce_mean_over_the_last_axis(opset):
    proto = net([N("GlobalAveragePool", ["x"], ["m"]), N("Sub", ["x", "m"], ["y"])], opset)
    out = check_pass(global_pool_to_reduce_mean, proto, RNG.normal(size=(3, 4, 6)).astype(np.float32))
    assert ops(out) == ["ReduceMean", "Sub"]
    mean = out.graph.node[0]
    assert (len(mean.input) == 2) == (opset >= 18)


def test_a_rank4_global_average_pool_stays():
    x4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])
    proto = net([N("GlobalAveragePool", ["x"], ["y"])], inputs=(x4,), y_shape=("N", 2, 1, 1))
    check_pass(global_pool_to_reduce_mean, proto, RNG.normal(size=(2, 2, 3, 3)).astype(np.float32), expect_changed=False)


def test_tf2onnx_layernorm_over_the_last_axis_of_a_sequence_is_fused():
    """tf2onnx's Keras LayerNormalization on (N, T, D): GlobalAveragePool means, x r + (-m) r + b
    with r = gamma / sqrt(var + eps)."""
    gamma, beta = RNG.uniform(0.5, 1.5, 6).astype(np.float32), RNG.normal(size=6).astype(np.float32)
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta"),
             numpy_helper.from_array(np.array(1e-3, np.float32), "eps")]
    nodes = [N("GlobalAveragePool", ["x"], ["m"]), N("Neg", ["m"], ["neg"]), N("Sub", ["x", "m"], ["d"]),
             N("Mul", ["d", "d"], ["d2"]), N("GlobalAveragePool", ["d2"], ["v"]), N("Add", ["v", "eps"], ["ve"]),
             N("Sqrt", ["ve"], ["s"]), N("Reciprocal", ["s"], ["r"]), N("Mul", ["r", "gamma"], ["rw"]),
             N("Mul", ["x", "rw"], ["xr"]), N("Mul", ["neg", "rw"], ["mr"]), N("Add", ["mr", "beta"], ["mb"]),
             N("Add", ["xr", "mb"], ["y"])]
    proto = net(nodes, initializers=inits)
    x = RNG.normal(size=(3, 4, 6)).astype(np.float32)
    before = run(proto, x)[0]
    assert "global_pool_to_reduce_mean" in canonicalize(proto) and ops(proto) == ["LayerNormalization"]
    np.testing.assert_allclose(run(proto, x)[0], before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
