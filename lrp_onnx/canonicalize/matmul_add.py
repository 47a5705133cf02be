"""Pass: fuse MatMul(x, W) + Add(b) with constant W, b and a 2-D x into one Gemm."""
import onnx
from onnx import helper

from ._graph import add_initializer, constant_value, consumers, output_names, rank_of, remove_unused_initializers


def fuse_matmul_add(model: onnx.ModelProto) -> bool:
    """Requires shape inference (for the rank of x) and constants as initializers. Ensures a
    MatMul with a constant (K, N) weight whose only consumer adds a constant bias of N values
    is one canonical Gemm node (W stored transposed, transB=1). Higher-rank MatMuls stay (their handler treats them as linear)."""
    graph = model.graph
    uses, outputs = consumers(graph), output_names(graph)
    fused, removed = False, []
    for node in list(graph.node):
        if node.op_type != "MatMul" or rank_of(graph, node.input[0]) != 2:
            continue
        weight = constant_value(graph, node.input[1])
        after = uses.get(node.output[0], [])
        if weight is None or weight.ndim != 2 or len(after) != 1 or node.output[0] in outputs:
            continue
        add, slot = after[0]
        if add.op_type != "Add":
            continue
        bias = constant_value(graph, add.input[1 - slot])
        if bias is None or bias.size != weight.shape[1] or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            continue
        weight_name = add_initializer(graph, weight.T, node.name + "_W")
        bias_name = add_initializer(graph, bias.reshape(-1).astype(weight.dtype), node.name + "_bias")
        gemm = helper.make_node("Gemm", [node.input[0], weight_name, bias_name], [add.output[0]], name=node.name, transB=1)
        graph.node.insert(list(graph.node).index(node), gemm)
        removed += [node, add]
        fused = True
    for node in removed:
        graph.node.remove(node)
    if fused:
        remove_unused_initializers(graph)
    return fused
