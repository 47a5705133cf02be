"""The networkx view of the graph and the relevance subgraph."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lrp_onnx import ops
from lrp_onnx.canonicalize import canonicalize
from lrp_onnx.errors import ModelError
from lrp_onnx.graph import build_graph, input_key, relevance_subgraph
from lrp_onnx.load import infer_shapes


def make(nodes, outputs, initializers=(), x_shape=("N", 4)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    canonicalize(proto)
    infer_shapes(proto)
    return proto


def weight(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def test_edges_carry_tensor_and_slot_even_between_the_same_nodes():
    proto = make([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                  helper.make_node("Concat", ["a", "a"], ["c"], name="cat", axis=1)],
                 [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 8])])
    mg = build_graph(proto)
    edges = sorted((u, v, d["tensor"], d["slot"]) for u, v, d in mg.dag.edges(data=True))
    assert edges == [(input_key("x"), "relu", "x", 0), ("relu", "cat", "a", 0), ("relu", "cat", "a", 1)]
    assert mg.shape("c") == ("N", 8)


def test_shape_subgraph_and_dead_branches_carry_no_relevance():
    """x -> Relu -> Reshape(shape computed from Shape(x)) -> Gemm -> y; Shape/Gather/Concat feed
    only the Reshape's shape input, and a second output branch does not reach y."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Concat", ["n", "minus_one"], ["target"], name="cat", axis=0),
        helper.make_node("Reshape", ["a", "target"], ["r"], name="reshape"),
        helper.make_node("Gemm", ["r", "W"], ["y"], name="gemm", transB=1),
        helper.make_node("Sigmoid", ["x"], ["side"], name="side"),
    ]
    inits = [weight("W", (3, 4)), numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    proto = make(nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                         helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", 4])], inits)
    sub = relevance_subgraph(build_graph(proto), ops.data_slots)
    assert sub.nodes == ["relu", "reshape", "gemm"]
    assert sub.tensors == {"x", "a", "r", "y"}


def test_an_unknown_op_on_the_path_is_kept_so_that_it_can_be_reported():
    nodes = [helper.make_node("Erf", ["x"], ["e"], name="erf"), helper.make_node("Gemm", ["e", "W"], ["y"], name="gemm", transB=1)]
    proto = make(nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight("W", (3, 4))])
    assert relevance_subgraph(build_graph(proto), ops.data_slots).nodes == ["erf", "gemm"]


def test_output_that_does_not_depend_on_the_input_is_an_error():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Identity", ["W"], ["y"], name="copy")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [weight("W", (3, 4))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    infer_shapes(proto)
    with pytest.raises(ModelError, match="does not depend on the input"):
        relevance_subgraph(build_graph(proto), ops.data_slots)


def test_every_float_input_is_a_source_and_relevance_starts_at_the_sources():
    """x and z are both relevance sources; given an inner tensor as the only source, the walk
    starts there and the nodes before it carry no relevance."""
    nodes = [helper.make_node("Add", ["x", "z"], ["s"], name="add"),
             helper.make_node("Gemm", ["s", "W"], ["y"], name="gemm", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("x", "z")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight("W", (3, 4))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    infer_shapes(proto)
    mg = build_graph(proto)
    assert mg.inputs == mg.sources == ["x", "z"]
    sub = relevance_subgraph(mg, ops.data_slots)
    assert sub.nodes == ["add", "gemm"] and sub.tensors == {"x", "z", "s", "y"}
    inner = relevance_subgraph(build_graph(proto, sources=["s"]), ops.data_slots)
    assert inner.nodes == ["gemm"] and inner.tensors == {"s", "y"}
