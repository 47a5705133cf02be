"""Pass: drop Casts that change nothing (float32 -> float32) next to the arithmetic of a
normalization, as exporters write them around statistics computed "in float32" (Llama's
RMSNorm: x.to(float32).pow(2).mean(...), (x * r).to(dtype)), so that the fusing passes see the
pattern itself. Other float32 Casts stay (they keep their tensor names; their handler passes
relevance)."""
import onnx
from onnx import TensorProto, helper

from ._graph import consumers, output_names, producers, rename_uses

#: The ops of a decomposed LayerNorm/RMSNorm: a no-op Cast reading from or feeding one is dropped.
_NORMALIZATION_ARITHMETIC = {"Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div", "Mul", "Sub"}


def _elem_type(graph: onnx.GraphProto, name: str):
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    return next((t.data_type for t in graph.initializer if t.name == name), None)


def drop_noop_casts(model: onnx.ModelProto) -> bool:
    """Requires shape inference (element types). Ensures no Cast to float32 of a float32 tensor
    next to normalization arithmetic remains, except one that writes a graph output."""
    graph = model.graph
    outputs, uses, made_by = output_names(graph), consumers(graph), producers(graph)
    removed = []
    for node in graph.node:
        if node.op_type != "Cast" or node.output[0] in outputs:
            continue
        neighbours = [user.op_type for user, _ in uses.get(node.output[0], [])]
        if node.input[0] in made_by:
            neighbours.append(made_by[node.input[0]].op_type)
        if not _NORMALIZATION_ARITHMETIC.intersection(neighbours):
            continue
        to = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None)
        if to == TensorProto.FLOAT and _elem_type(graph, node.input[0]) == TensorProto.FLOAT:
            rename_uses(graph, node.output[0], node.input[0])
            removed.append(node)
    for node in removed:
        graph.node.remove(node)
    return bool(removed)
