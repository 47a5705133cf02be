"""Pass: fold the shape arithmetic that exporters emit for dynamic batch sizes.

torch.onnx writes ``x.view(n, 2, c // 2, h, w)`` as Shape -> Gather -> Div -> Unsqueeze ->
Concat -> Reshape. Shape inference cannot see through the Div, so every tensor after the
Reshape loses its static sizes, which relevance handlers need. Only the batch axis is dynamic
here, so every entry of a Shape other than axis 0 is a known number: the pass replaces those
entries by constants and evaluates the small integer ops that then have only constant inputs.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..load import infer_shapes
from ._graph import consumers, remove_unused_initializers

#: Integer ops on shapes that are evaluated once all their inputs are constants.
FOLDABLE = {"Gather", "Div", "Mul", "Add", "Sub", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice",
            "Floor", "Ceil", "Range", "Reshape", "Equal", "Where", "ConstantOfShape", "Mod", "Min", "Max",
            "Transpose"}   # Transpose: Swin's window-padding pads
#: Larger constants are weights, not shapes: they are left alone.
MAX_FOLDED_SIZE = 64


def _static_dims(model: onnx.ModelProto) -> Dict[str, list]:
    """tensor -> dims (int or None) from the value_info shape inference recorded."""
    dims = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return dims


def _evaluate(node: onnx.NodeProto, values, opsets) -> Optional[list]:
    """The outputs of one node on constant inputs (onnx's reference evaluator), or None."""
    inputs = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in enumerate(values)]
    outputs = [helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None) for k in range(len(node.output))]
    copy = helper.make_node(node.op_type, [i.name for i in inputs], [o.name for o in outputs], **{
        a.name: helper.get_attribute_value(a) for a in node.attribute})
    try:
        model = helper.make_model(helper.make_graph([copy], "fold", inputs, outputs), opset_imports=opsets)
        return ReferenceEvaluator(model).run(
            None, {f"i{k}": v for k, v in enumerate(values)})
    except Exception:   # an op the evaluator cannot run here stays in the graph, unfolded
        return None


def fold_shape_arithmetic(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers. Ensures Gather(Shape(x), k) with a static dim k is a
    constant, and that foldable integer ops with constant inputs (each at most MAX_FOLDED_SIZE
    elements) are replaced by their value; shapes are re-inferred after each round, as folding
    one reshape makes the sizes after it known."""
    changed = False
    while _fold_once(model):
        changed = True
        infer_shapes(model)
    return changed


def _fold_once(model: onnx.ModelProto) -> bool:
    graph = model.graph
    dims = _static_dims(model)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if np.prod(t.dims) <= MAX_FOLDED_SIZE}
    folded = {}
    uses = consumers(graph)
    for node in graph.node:   # Shape entries that are known numbers
        if node.op_type != "Shape" or node.input[0] not in dims:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = dims[node.input[0]][attrs.get("start", 0):attrs.get("end", None)]
        for gather, slot in uses[node.output[0]]:
            index = constants.get(gather.input[1]) if gather.op_type == "Gather" and slot == 0 else None
            if index is None:
                continue
            picked = [shape[int(i)] for i in np.asarray(index).reshape(-1)]
            if all(p is not None and p > 0 for p in picked):
                folded[gather.output[0]] = np.asarray(picked, np.int64).reshape(np.shape(index))
    constants.update(folded)
    for node in graph.node:   # graph.node is in topological order
        if node.op_type not in FOLDABLE or any(o in folded for o in node.output):
            continue
        if not node.input or not all(name in constants for name in node.input if name):
            continue
        values = _evaluate(node, [constants[name] for name in node.input], model.opset_import) if all(node.input) else None
        if values is None or any(np.size(v) > MAX_FOLDED_SIZE for v in values):
            continue
        for name, value in zip(node.output, values):
            folded[name] = constants[name] = np.asarray(value)
    if not folded:
        return False
    keep = [node for node in graph.node if not all(o in folded for o in node.output if o)]
    still_read = {name for node in keep for name in node.input} | {o.name for o in graph.output}
    keep = [node for node in keep if node.op_type != "Shape" or node.output[0] in still_read]
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in folded.items())
    remove_unused_initializers(graph)
    return True
