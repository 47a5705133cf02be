"""Pass: turn Constant nodes into initializers, so weights are found in one place."""
import numpy as np
import onnx
from onnx import helper, numpy_helper

_SCALAR_ATTRS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def constants_to_initializers(model: onnx.ModelProto) -> bool:
    """Requires nothing. Ensures no Constant node with a tensor or numeric value remains."""
    graph = model.graph
    keep, changed = [], False
    for node in graph.node:
        tensor = None
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value":
                tensor = numpy_helper.to_array(attr.t)
            elif attr.name in _SCALAR_ATTRS:
                tensor = np.asarray(helper.get_attribute_value(attr), dtype=_SCALAR_ATTRS[attr.name])
        if tensor is None:
            keep.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(keep)
    return changed
