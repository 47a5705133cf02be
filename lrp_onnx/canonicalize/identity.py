"""Pass: drop Identity and inference-mode Dropout nodes."""
import onnx

from ._graph import consumers, output_names, producers, rename_uses


def _is_noop(node: onnx.NodeProto, uses) -> bool:
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        training = len(node.input) > 2 and node.input[2]
        mask_used = len(node.output) > 1 and node.output[1] and uses.get(node.output[1])
        return not training and not mask_used
    return False


def drop_identity(model: onnx.ModelProto) -> bool:
    """Requires nothing. Ensures no Identity, and no Dropout without a training-mode input or
    a used mask, remains, except an Identity that copies a graph input or initializer straight
    to a graph output (removing it would change the model's interface)."""
    graph = model.graph
    uses, made_by, outputs = consumers(graph), producers(graph), output_names(graph)
    removed = []
    for node in graph.node:
        if not _is_noop(node, uses):
            continue
        source, target = node.input[0], node.output[0]
        if target in outputs:
            upstream = made_by.get(source)
            if upstream is None or source in outputs:
                continue
            # Let the upstream node write the graph output directly.
            upstream.output[list(upstream.output).index(source)] = target
            rename_uses(graph, source, target)
            made_by[target] = upstream
        else:
            rename_uses(graph, target, source)
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    return bool(removed)
