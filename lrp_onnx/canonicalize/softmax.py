"""Pass: strip a Softmax/LogSoftmax that produces a graph output, so the logits are explained."""
import onnx
from onnx import helper

from ._graph import consumers, producers


def strip_output_softmax(model: onnx.ModelProto) -> bool:
    """Requires nothing. Ensures no graph output is produced by Softmax or LogSoftmax: the
    output becomes the normaliser's input (the logits), keeping its element type."""
    graph = model.graph
    made_by, uses = producers(graph), consumers(graph)
    changed = False
    for position, output in enumerate(list(graph.output)):
        node = made_by.get(output.name)
        if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
            continue
        logits = node.input[0]
        graph.output.remove(output)
        graph.output.insert(position, helper.make_tensor_value_info(logits, output.type.tensor_type.elem_type, None))
        if not uses.get(node.output[0]):
            graph.node.remove(node)
        changed = True
    return changed
