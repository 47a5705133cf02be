"""The deployed model's own forward pass inside its explainer (README, Deployed formats).

For a quantized (int8) or float16 file, canonicalization gives the float32 network that the
relevance is computed on (the *relevance twin*: dequantized weights, activation Q/DQ pairs read
as clamps, float16 computed in float32), which differs from the deployed file's output by its
rounding. So that the explainer still reports what the deployed file computes, its original
graph is embedded beside the twin, every node and tensor renamed with ``PREFIX``, reading the
same inputs (cast back to the file's input type where that differs): the explainer's model
output is the deployed file's output (as float32), and its arg-max is the predicted class that
a NaN target mask selects. The twin's output, on which the relevance starts, is the extra
output ``TWIN_OUTPUT`` (Explanation.total is taken from it, so that conservation is measured
on the function that was explained).
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

from .canonicalize._graph import rename_uses
from .load import load_model

PREFIX = "lrp_deployed/"
TWIN_OUTPUT = "lrp_twin_output"
#: The passes whose rewrite changes the model's function (by rounding), not only its spelling.
APPROXIMATING = {"qdq_to_clip", "expand_qoperators", "float16_to_float32"}


def scores_name(output: str) -> str:
    """The explainer tensor holding the deployed file's output (float32)."""
    return "lrp_deployed:" + output


def original_forward(model, passes: Iterable[str], output: str) -> Optional[onnx.ModelProto]:
    """The model as loaded, when canonicalization approximated its function (else None, also
    when it has no tensor ``output``: then the explainer's output is the twin's)."""
    if not APPROXIMATING & set(passes):
        return None
    original = load_model(model)
    graph = original.graph
    if output not in {o for n in graph.node for o in n.output} | {o.name for o in graph.output}:
        return None
    return original


def embed(graph: onnx.GraphProto, original: onnx.ModelProto, output: str) -> bool:
    """Append ``original``'s graph to the explainer ``graph`` (see the module docstring): the
    twin's tensor ``output`` becomes ``TWIN_OUTPUT`` (also a graph output), the deployed value
    is ``scores_name(output)`` and, under the name ``output``, the explainer's model output.
    False (nothing changed) when ``original`` has no tensor named ``output``."""
    source = original.graph
    produced = {o for n in source.node for o in n.output}
    if output not in produced and output not in {o.name for o in source.output}:
        return False
    inputs = {i.name: i for i in source.input}
    constants = {t.name for t in source.initializer}
    explainer_inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    mapping, casts = {}, []
    for name, info in inputs.items():
        if name in constants:
            continue
        elem = info.type.tensor_type.elem_type
        if explainer_inputs.get(name, elem) != elem:
            mapping[name] = PREFIX + name
            casts.append(helper.make_node("Cast", [name], [PREFIX + name], name=PREFIX + "cast_" + name, to=elem))
        else:
            mapping[name] = name

    def renamed(name: str) -> str:
        return "" if not name else mapping.get(name, PREFIX + name)

    rename_uses(graph, output, TWIN_OUTPUT, producers_too=True)
    nodes = list(casts)
    for k, node in enumerate(source.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = PREFIX + (node.name or f"node_{k}")
        del copy.input[:]
        copy.input.extend(renamed(n) for n in node.input)
        del copy.output[:]
        copy.output.extend(renamed(n) for n in node.output)
        nodes.append(copy)
    deployed = renamed(output)
    elem = next((v.type.tensor_type.elem_type for v in list(source.value_info) + list(source.output) if v.name == output),
                TensorProto.FLOAT)
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [deployed], [PREFIX + "output_float"], name=PREFIX + "output_float",
                                      to=TensorProto.FLOAT))
        deployed = PREFIX + "output_float"
    # Max(y, -inf) = y, as a node onnxruntime keeps: with an Identity there, its QDQ fusions treat
    # the file's last DequantizeLinear differently (resnet18's final Gemm then stays in float)
    floor = PREFIX + "minus_inf"
    graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(-np.inf, np.float32), floor))
    nodes.append(helper.make_node("Max", [deployed, floor], [scores_name(output)], name=PREFIX + "scores"))
    nodes.append(helper.make_node("Identity", [scores_name(output)], [output], name=PREFIX + "output"))
    graph.node.extend(nodes)
    for tensor in source.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = renamed(tensor.name)
        graph.initializer.append(copy)
    twin_info = next((o for o in graph.output if o.name == output), None)
    if twin_info is not None:
        info = onnx.ValueInfoProto()
        info.CopyFrom(twin_info)
        info.name = TWIN_OUTPUT
        graph.output.append(info)
    return True
