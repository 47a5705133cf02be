"""Pass: rewrite onnxruntime's QOperator and integer ops as float ops between a
DequantizeLinear and a QuantizeLinear (the QDQ form), so that the passes after it (dequantize.py:
weights to float constants; qdq_clip.py: activation Q/DQ pairs to Clip) give the float network
the quantized one computes.

- QLinearConv, QLinearMatMul (ONNX) and com.microsoft's QGemm, QLinearAdd, QLinearMul,
  QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, QLinearSigmoid,
  QLinearLeakyRelu: DequantizeLinear of every quantized input -> the float op -> QuantizeLinear
  with the output's scale and zero point. The int32 bias of QLinearConv/QGemm (scale
  x_scale * w_scale, zero point 0) becomes the float bias (QGemm computes alpha (A'B' + C): a
  Gemm with beta = alpha). Exact up to float32 accumulation: the integer kernels compute the
  same sums, rounded once at the output (an output may land one step away).
- An op that only moves or selects quantized values (MaxPool, Flatten, Reshape, Transpose,
  Squeeze, Unsqueeze, Identity, Slice, DepthToSpace, SpaceToDepth), applied by the QOperator
  format to an int8/uint8 tensor: DequantizeLinear -> the op -> QuantizeLinear with the same
  parameters. Exact (it commutes with the increasing map q -> (q - z) s).
- Dynamic quantization (quantize_dynamic): DynamicQuantizeLinear(x) -> ConvInteger/MatMulInteger
  -> Cast -> Mul(x_scale * w_scale) [-> Add(bias)] becomes Conv/MatMul(x, dequantized W) [+ bias].
  DynamicQuantizeLinear picks its range from x itself (it always contains x and 0), so nothing
  is clamped: the only change is x's rounding to its 8-bit grid, |difference| <= x_scale / 2.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..load import infer_shapes
from ._graph import constant_value, consumers, output_names, producers, remove_unused_initializers
from .dequantize import attribute, dequantize_array

_MS = "com.microsoft"
#: Ops that only move or select values: they commute with per-tensor dequantization.
MOVERS = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice",
          "DepthToSpace", "SpaceToDepth"}
_POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "strides")


class _Rewriter:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.taken = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
                      | {o for n in graph.node for o in n.output} | {n.name for n in graph.node})
        self.new: List[onnx.NodeProto] = []
        self.qparams: Dict[str, Tuple[str, str]] = {}   # quantized tensor -> (scale, zero point)

    def fresh(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.taken:
            k += 1
            name = f"{hint}_{k}"
        self.taken.add(name)
        return name

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op, inputs, outputs, hint, domain="", **attrs) -> onnx.NodeProto:
        made = helper.make_node(op, list(inputs), list(outputs), name=self.fresh(hint), domain=domain, **attrs)
        self.new.append(made)
        return made

    def dequantize(self, x: str, scale: str, zp: str, hint: str, axis: int = 1) -> str:
        """The float value of a quantized tensor: a constant where everything is, else a
        DequantizeLinear node."""
        x_value, s_value = constant_value(self.graph, x), constant_value(self.graph, scale)
        zp_value = constant_value(self.graph, zp) if zp else None
        if x_value is not None and s_value is not None and (not zp or zp_value is not None):
            return self.const(dequantize_array(x_value, s_value, zp_value, axis), hint + "_dequantized")
        out = self.fresh(hint + "_float")
        self.node("DequantizeLinear", [x, scale, zp] if zp else [x, scale], [out], hint + "_dq",
                  **({"axis": axis} if axis != 1 else {}))
        return out

    def quantize(self, x: str, scale: str, zp: str, out: str, hint: str) -> None:
        self.node("QuantizeLinear", [x, scale, zp] if zp else [x, scale], [out], hint + "_q")
        self.qparams[out] = (scale, zp)

    def bias(self, b: str, x_scale: str, w_scale: str, hint: str) -> Optional[str]:
        """The float bias of an int32 bias quantized with scale x_scale * w_scale (zero point 0)."""
        values = [constant_value(self.graph, n) for n in (b, x_scale, w_scale)]
        if any(v is None for v in values):
            return None
        q, xs, ws = values
        scale = float(xs.reshape(-1)[0]) * (ws.astype(np.float64).reshape(-1) if ws.size > 1 else float(ws.reshape(-1)[0]))
        return self.const((q.astype(np.float64) * scale).astype(np.float32), hint + "_bias")


def _get(node: onnx.NodeProto, slot: int) -> str:
    return node.input[slot] if len(node.input) > slot else ""


def _conv_attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute
            if a.name in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}


def _with_bias(rw: _Rewriter, node: onnx.NodeProto, args: list, slot: int, hint: str) -> Optional[list]:
    """``args`` and the float bias of the node's int32 bias at input ``slot``, if it has one
    (QLinearConv and QGemm both take x_scale and w_scale at inputs 1 and 4); None when that bias
    is not a constant."""
    if not _get(node, slot):
        return args
    bias = rw.bias(node.input[slot], node.input[1], node.input[4], hint)
    return None if bias is None else args + [bias]


def _qlinear(rw: _Rewriter, node: onnx.NodeProto) -> bool:
    """Rewrite one QOperator node (False: not one, or one that is not read)."""
    op, domain, hint, inp = node.op_type, node.domain, node.name or node.output[0], node.input
    if domain in ("", "ai.onnx") and op == "QLinearConv":
        x = rw.dequantize(inp[0], inp[1], inp[2], hint + "_x")
        w = rw.dequantize(inp[3], inp[4], inp[5], hint + "_w", axis=0)
        args = _with_bias(rw, node, [x, w], 8, hint)
        if args is None:
            return False
        y = rw.fresh(node.output[0] + "_float")
        rw.node("Conv", args, [y], hint + "_conv", **_conv_attrs(node))
        rw.quantize(y, inp[6], inp[7], node.output[0], hint)
        return True
    if domain in ("", "ai.onnx") and op == "QLinearMatMul":
        a = rw.dequantize(inp[0], inp[1], inp[2], hint + "_a")
        b = rw.dequantize(inp[3], inp[4], inp[5], hint + "_b", axis=-1)
        y = rw.fresh(node.output[0] + "_float")
        rw.node("MatMul", [a, b], [y], hint + "_matmul")
        rw.quantize(y, inp[6], inp[7], node.output[0], hint)
        return True
    if domain != _MS:
        return False
    if op == "QGemm":
        trans_b = attribute(node, "transB", 0)
        a = rw.dequantize(inp[0], inp[1], inp[2], hint + "_a")
        b = rw.dequantize(inp[3], inp[4], inp[5], hint + "_b", axis=0 if trans_b else 1)
        args = _with_bias(rw, node, [a, b], 6, hint)
        if args is None:
            return False
        float_out = not _get(node, 7)
        y = node.output[0] if float_out else rw.fresh(node.output[0] + "_float")
        alpha = float(attribute(node, "alpha", 1.0))   # onnxruntime's QGemm: alpha * (A'B' + C)
        rw.node("Gemm", args, [y], hint + "_gemm", alpha=alpha, beta=alpha,
                transA=int(attribute(node, "transA", 0)), transB=int(trans_b))
        if not float_out:
            rw.quantize(y, inp[7], _get(node, 8), node.output[0], hint)
        return True
    if op in ("QLinearAdd", "QLinearMul"):
        a = rw.dequantize(inp[0], inp[1], _get(node, 2), hint + "_a")
        b = rw.dequantize(inp[3], inp[4], _get(node, 5), hint + "_b")
        y = rw.fresh(node.output[0] + "_float")
        rw.node(op[len("QLinear"):], [a, b], [y], hint + "_float")
        rw.quantize(y, inp[6], _get(node, 7), node.output[0], hint)
        return True
    unary = {"QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearAveragePool": "AveragePool",
             "QLinearSigmoid": "Sigmoid", "QLinearLeakyRelu": "LeakyRelu"}
    if op in unary:
        if attribute(node, "channels_last", 0):
            return False
        attrs = {}
        if op == "QLinearAveragePool":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in _POOL_ATTRS}
        elif op == "QLinearLeakyRelu":
            attrs = {"alpha": float(attribute(node, "alpha", 0.01))}
        x = rw.dequantize(inp[0], inp[1], _get(node, 2), hint + "_x")
        y = rw.fresh(node.output[0] + "_float")
        rw.node(unary[op], [x], [y], hint + "_float", **attrs)
        rw.quantize(y, inp[3], _get(node, 4), node.output[0], hint)
        return True
    if op == "QLinearConcat":
        parts = [rw.dequantize(inp[k], inp[k + 1], inp[k + 2], f"{hint}_{k}") for k in range(2, len(inp), 3)]
        y = rw.fresh(node.output[0] + "_float")
        rw.node("Concat", parts, [y], hint + "_float", axis=int(attribute(node, "axis")))
        rw.quantize(y, inp[0], inp[1], node.output[0], hint)
        return True
    return False


def _mover(rw: _Rewriter, node: onnx.NodeProto) -> bool:
    """An op that moves quantized values, applied to an integer tensor: DQ -> op -> Q."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in MOVERS or node.input[0] not in rw.qparams:
        return False
    scale, zp = rw.qparams[node.input[0]]
    hint = node.name or node.output[0]
    x = rw.dequantize(node.input[0], scale, zp, hint + "_x")
    float_outs = [rw.fresh(o + "_float") if o else "" for o in node.output]
    float_outs[1:] = node.output[1:]   # MaxPool's Indices stay as they are
    copy = helper.make_node(node.op_type, [x] + list(node.input[1:]), float_outs, name=rw.fresh(hint + "_float"))
    copy.attribute.extend(node.attribute)
    rw.new.append(copy)
    rw.quantize(float_outs[0], scale, zp, node.output[0], hint)
    return True


def _scale_factor(graph, made_by, mul: onnx.NodeProto, x_scale: str) -> Optional[np.ndarray]:
    """The constant c of Mul(cast, Mul(x_scale, c)) (the weight scale), or None."""
    other = [n for n in mul.input]
    for name in other:
        scale_node = made_by.get(name)
        if scale_node is not None and scale_node.op_type == "Mul" and x_scale in scale_node.input:
            rest = [n for n in scale_node.input if n != x_scale]
            value = constant_value(graph, rest[0]) if len(rest) == 1 else None
            if value is not None:
                return value
    return None


def _constant_or_reshaped(graph, made_by, name: str) -> Optional[np.ndarray]:
    value = constant_value(graph, name)
    if value is not None:
        return value
    node = made_by.get(name)
    if node is not None and node.op_type == "Reshape":
        data, shape = constant_value(graph, node.input[0]), constant_value(graph, node.input[1])
        if data is not None and shape is not None and attribute(node, "allowzero", 0) == 0 and 0 not in shape.tolist():
            return data.reshape(shape.tolist())
    return None


def _dynamic(rw: _Rewriter, node: onnx.NodeProto, made_by, uses, outputs) -> Optional[List[onnx.NodeProto]]:
    """ConvInteger/MatMulInteger fed by DynamicQuantizeLinear, then Cast(float) and
    Mul(x_scale * w_scale) [and Add(constant bias) for a Conv]: one float Conv/MatMul. Returns
    the nodes it replaces, or None when the pattern is not there."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("ConvInteger", "MatMulInteger"):
        return None
    graph = rw.graph
    dql = made_by.get(node.input[0])
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or _get(node, 2) != dql.output[2]:
        return None
    w_value = constant_value(graph, node.input[1])
    w_zp = constant_value(graph, _get(node, 3)) if _get(node, 3) else np.zeros((), np.int64)
    chain = uses.get(node.output[0], [])
    if w_value is None or w_zp is None or len(chain) != 1 or chain[0][0].op_type != "Cast" or node.output[0] in outputs:
        return None
    cast = chain[0][0]
    if attribute(cast, "to") != TensorProto.FLOAT or len(uses.get(cast.output[0], [])) != 1 or cast.output[0] in outputs:
        return None
    mul = uses[cast.output[0]][0][0]
    c = _scale_factor(graph, made_by, mul, dql.output[1]) if mul.op_type == "Mul" else None
    if c is None:
        return None
    conv = node.op_type == "ConvInteger"
    axis = 0 if conv else -1
    flat = c.reshape(-1)
    if flat.size not in (1, w_value.shape[axis]):
        return None
    zp = w_zp.reshape(-1)
    if zp.size not in (1, w_value.shape[axis]):
        return None
    weight = dequantize_array(w_value, flat.astype(np.float32), zp.astype(np.int64), axis)
    hint = node.name or node.output[0]
    replaced, out = [node, cast, mul], mul.output[0]
    args = [dql.input[0], rw.const(weight, hint + "_W")]
    if conv:
        add = uses.get(mul.output[0], [])
        if len(add) == 1 and add[0][0].op_type == "Add" and mul.output[0] not in outputs:
            other = [n for n in add[0][0].input if n != mul.output[0]]
            bias = _constant_or_reshaped(graph, made_by, other[0]) if len(other) == 1 else None
            channels = weight.shape[0]
            if bias is not None and bias.size == channels and (bias.ndim <= 1 or bias.shape[:2] in ((1, channels), (channels,))):
                args.append(rw.const(bias.reshape(-1).astype(np.float32), hint + "_B"))
                replaced.append(add[0][0])
                out = add[0][0].output[0]
        rw.node("Conv", args, [out], hint + "_float", **_conv_attrs(node))
    else:
        rw.node("MatMul", args, [out], hint + "_float")
    return replaced


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read or is a graph output (repeatedly)."""
    outputs = output_names(graph)
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def expand_qoperators(model: onnx.ModelProto) -> bool:
    """Requires constants as initializers and named nodes. Ensures every QOperator node listed
    in the module docstring with constant weights and bias, every mover applied to one of their
    outputs, and every matched dynamic-quantization chain is replaced by float ops (between
    DequantizeLinear and QuantizeLinear for the QOperator ones); unused nodes left by the
    rewrite are removed. Refuses (leaves the node) a channels-last QLinear pool, a non-constant
    bias and a dynamic chain of another shape."""
    graph = model.graph
    rw = _Rewriter(graph)
    made_by, uses, outputs = producers(graph), consumers(graph), output_names(graph)
    drop: set = set()
    rebuilt: List[onnx.NodeProto] = []
    changed = False
    for node in list(graph.node):
        if id(node) in drop:
            continue
        rw.new = []
        if node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx"):
            rw.qparams[node.output[0]] = (node.input[1], _get(node, 2))
        replaced = None
        if _qlinear(rw, node) or _mover(rw, node):
            replaced = [node]
        else:
            replaced = _dynamic(rw, node, made_by, uses, outputs)
        if not replaced:
            rebuilt.append(node)
            continue
        changed = True
        drop.update(id(n) for n in replaced)
        rebuilt = [n for n in rebuilt if id(n) not in drop]
        rebuilt.extend(rw.new)
    if not changed:
        return False
    del graph.node[:]
    graph.node.extend(rebuilt)
    remove_dead_nodes(graph)
    remove_unused_initializers(graph)
    infer_shapes(model)   # the element types and ranks of the new tensors, for the passes after it
    return True
