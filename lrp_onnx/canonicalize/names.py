"""Pass: give every node a unique, non-empty name (rules and errors refer to nodes by name)."""
import onnx


def assign_node_names(model: onnx.ModelProto) -> bool:
    """Requires nothing. Ensures node names are unique and non-empty. Keeps given names."""
    seen = set()
    changed = False
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        if name != node.name:
            node.name, changed = name, True
        seen.add(name)
    return changed
