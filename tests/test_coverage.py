"""lrp_onnx.coverage: every op type of a model, whether it carries relevance, whether it has a
handler; built on tiny models."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from lrp_onnx.coverage import op_coverage, unsupported_ops


def model(extra_op):
    """x -> Gemm -> <extra_op> -> Gemm -> y, plus a Shape of x that carries no relevance."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1), helper.make_node(extra_op, ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2"], ["y"], transB=1), helper.make_node("Shape", ["x"], ["s"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]), helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "W1"),
         numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "W2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rows_count_nodes_and_relevance_path():
    rows = {row.op_type: row for row in op_coverage(model("Relu"))}
    assert set(rows) == {"Gemm", "Relu", "Shape"}
    assert (rows["Gemm"].count, rows["Gemm"].on_path, rows["Gemm"].handled) == (2, 2, True)
    assert rows["Shape"].on_path == 0 and not rows["Shape"].blocking
    assert unsupported_ops(model("Relu")) == []


def test_an_unhandled_op_on_the_path_blocks():
    rows = {row.op_type: row for row in op_coverage(model("Cos"))}
    assert rows["Cos"].blocking and not rows["Cos"].handled and rows["Cos"].on_path == 1
    assert unsupported_ops(model("Cos")) == ["Cos"]
