"""Read the LRP Toolbox's plain-text model format (Lapuschkin et al., JMLR 2016) and write an
equivalent ONNX model: ``python -m exporters.lrp_toolbox LeNet-5.txt -o lenet5.onnx``.

The format is a sequence of layers, each a header line and, for Linear and Convolution, a line
of weights and a line of biases (../shared/data/README.md). The toolbox computes in NHWC with
valid (unpadded) windows; the ONNX model takes the same input, (N, H, W, C) or (N, m) for a
first Linear layer, transposes once to NCHW, and transposes back to NHWC before a Flatten, so
flattening keeps the toolbox's row-major (H, W, C) order.

Layer mapping: Linear -> Gemm (W as stored, (m, n)); Convolution (h, w, d, n) -> Conv with
weights transposed to (n, d, h, w); Rect -> Relu; Tanh -> Tanh; MaxPool -> MaxPool; SoftMax
(only as the last layer, on a flat input) -> Softmax, which lrp_onnx strips to explain the
scores; SumPool -> a depthwise Conv (group = channels) whose weights are all 1/sqrt(h*w),
which computes exactly the toolbox's sum * 1/sqrt(h*w).

SumPool and the epsilon rule: the toolbox's SumPool LRP divides by the *unscaled* window sum,
``R_i = x_i R / (sum(x) + eps sign)`` (its ``_epsilon_lrp`` divides Y by the normalizer
before adding eps). The depthwise Conv under Epsilon(e) gives ``x_i c R / (c sum(x) + e
sign)`` with c = 1/sqrt(h*w), i.e. the same with eps = e / c. So the toolbox's rule with eps
is Epsilon(eps / sqrt(h*w)) on that Conv, and ``toolbox_composite`` assigns exactly that.
(AveragePool followed by Mul(constant) would put eps on sum/(h*w), a third scaling, and needs
a Mul handler.) Alpha-beta has no eps to speak of (1e-16), so the scale does not matter there.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ExportError, run_cli

OPSET = 17
#: Header name -> number of integer parameters after it.
HEADERS = {"Linear": 2, "Convolution": 6, "SumPool": 4, "MaxPool": 4, "Rect": 0, "Tanh": 0, "SoftMax": 0, "Flatten": 0}


@dataclass
class ToolboxLayer:
    """One layer of a toolbox file: its kind, integer header parameters, line of the header
    (1-based) and, for Linear/Convolution, W (as the toolbox shapes it) and b."""

    kind: str
    params: Tuple[int, ...]
    line: int
    weights: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    name: str = ""

    @property
    def window(self) -> Tuple[int, int, int, int]:
        """(kernel h, kernel w, stride h, stride w) of a Convolution or pooling layer."""
        if self.kind == "Convolution":
            h, w, _, _, s0, s1 = self.params
            return h, w, s0, s1
        return self.params


def _numbers(text: str, line: int, count: int, what: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split()], np.float64)
    except ValueError as exc:
        raise ExportError(f"line {line}: expected {count} numbers ({what}), found a non-number ({exc})") from None
    if values.size != count:
        raise ExportError(f"line {line}: expected {count} numbers ({what}), found {values.size}")
    if not np.all(np.isfinite(values)):
        raise ExportError(f"line {line}: {what} contain NaN or infinity")
    return values


def parse(text: str) -> List[ToolboxLayer]:
    """The layers of a toolbox model file's text; a malformed file raises ExportError naming
    the line and what was expected there. Blank lines are ignored."""
    lines = [(i + 1, s.strip()) for i, s in enumerate(text.splitlines()) if s.strip()]
    layers, pos = [], 0

    def take(what: str) -> Tuple[int, str]:
        nonlocal pos
        if pos >= len(lines):
            last = lines[-1][0] if lines else 0
            raise ExportError(f"line {last + 1}: expected {what}, found the end of the file")
        pos += 1
        return lines[pos - 1]

    while pos < len(lines):
        number, header = take("a layer header")
        kind, *rest = header.split()
        if kind not in HEADERS:
            raise ExportError(f"line {number}: unknown layer {kind[:40]!r}; expected one of {', '.join(HEADERS)}")
        try:
            params = tuple(int(v) for v in rest)
        except ValueError:
            raise ExportError(f"line {number}: {kind} takes {HEADERS[kind]} integers, got {' '.join(rest)[:60]!r}") from None
        if len(params) != HEADERS[kind] or any(p <= 0 for p in params):
            raise ExportError(f"line {number}: {kind} takes {HEADERS[kind]} positive integers, got {len(params)}: {header[:60]!r}")
        layer = ToolboxLayer(kind, params, number, name=f"{kind.lower()}{len(layers)}")
        if kind in ("Linear", "Convolution"):
            shape = params if kind == "Linear" else params[:4]
            n = params[1] if kind == "Linear" else params[3]
            size = int(np.prod(shape))
            desc = f"{kind} weights, {'*'.join(map(str, shape))}"
            line, text_w = take(f"a line of {size} {desc}")
            layer.weights = _numbers(text_w, line, size, desc).reshape(shape)
            line, text_b = take(f"a line of {n} {kind} biases")
            layer.bias = _numbers(text_b, line, n, f"{kind} biases")
        layers.append(layer)
    if not layers:
        raise ExportError("the file has no layers")
    return layers


def read(path) -> List[ToolboxLayer]:
    """Parse the toolbox model file at ``path``."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    try:
        return parse(text)
    except ExportError as exc:
        raise ExportError(f"{path}: {exc}") from None


def _spatial_out(size: Tuple[int, int], layer: ToolboxLayer) -> Optional[Tuple[int, int]]:
    """Output (H, W) of a valid window layer, the toolbox's (H - h) // s + 1; None if the
    window does not fit."""
    h, w, s0, s1 = layer.window
    if size[0] < h or size[1] < w:
        return None
    return (size[0] - h) // s0 + 1, (size[1] - w) // s1 + 1


def infer_input_shape(layers: Sequence[ToolboxLayer], largest: int = 1024) -> Tuple[int, ...]:
    """The input shape without the batch axis. A model starting with Linear m n takes (m,).
    Otherwise the file does not store H and W: take the smallest square H = W for which the
    layers after the last window layer fit (a Flatten then Linear m: H'*W'*C' = m; nothing
    but activations/Flatten/SoftMax: H' = W' = 1), and C from the first Convolution."""
    first = next((l for l in layers if l.kind in ("Linear", "Convolution", "SumPool", "MaxPool")), None)
    if first is None:
        raise ExportError("the model has no Linear, Convolution or pooling layer: its input shape is unknown")
    if first.kind == "Linear":
        return (first.params[0],)
    conv = next((l for l in layers if l.kind == "Convolution"), None)
    if conv is None or conv is not next(l for l in layers if l.kind in ("Convolution", "Linear")):
        raise ExportError(f"line {first.line}: cannot infer the input depth before the first Convolution; give the input shape")
    channels = conv.params[2]
    for side in range(1, largest + 1):
        try:
            _shapes(layers, (side, side, channels), final_one=True)
        except ExportError:
            continue
        return side, side, channels
    raise ExportError(f"no square input up to {largest}x{largest} fits the layers; give the input shape")


def _shapes(layers: Sequence[ToolboxLayer], input_shape: Tuple[int, ...], final_one: bool = False) -> List[Tuple[int, ...]]:
    """The shape (without batch, NHWC) after each layer, checking that every layer fits what it
    receives. ``final_one``: also require a spatial model's flattened output to be 1x1 when no
    Linear follows (used to infer the input size)."""
    shape, shapes = tuple(input_shape), []
    for i, layer in enumerate(layers):
        where = f"line {layer.line}: {layer.kind}"
        if layer.kind == "Linear":
            if len(shape) != 1:
                raise ExportError(f"{where} gets a (H, W, C) = {shape} tensor; the format needs a Flatten before a Linear layer")
            if shape[0] != layer.params[0]:
                raise ExportError(f"{where} expects {layer.params[0]} inputs, gets {shape[0]}")
            shape = (layer.params[1],)
        elif layer.kind in ("Convolution", "SumPool", "MaxPool"):
            if len(shape) != 3:
                raise ExportError(f"{where} needs an (H, W, C) input, gets a flat one of {shape[0]}")
            if layer.kind == "Convolution" and shape[2] != layer.params[2]:
                raise ExportError(f"{where} expects input depth {layer.params[2]}, gets {shape[2]}")
            out = _spatial_out(shape[:2], layer)
            if out is None:
                raise ExportError(f"{where} window {layer.window[:2]} does not fit its {shape[:2]} input")
            shape = out + (layer.params[3] if layer.kind == "Convolution" else shape[2],)
        elif layer.kind == "Flatten":
            if final_one and len(shape) == 3 and not any(l.kind == "Linear" for l in layers[i:]) and shape[:2] != (1, 1):
                raise ExportError(f"{where}: output {shape[:2]} is not 1x1")
            shape = (int(np.prod(shape)),)
        elif layer.kind == "SoftMax" and (i != len(layers) - 1 or len(shape) != 1):
            raise ExportError(f"{where} is supported only as the last layer, on a flat input")
        shapes.append(shape)
    if final_one and len(shape) == 3 and shape[:2] != (1, 1):
        raise ExportError(f"the output {shape[:2]} is not 1x1")
    return shapes


def to_onnx(layers: Sequence[ToolboxLayer], input_shape: Optional[Sequence[int]] = None,
            name: str = "lrp_toolbox") -> onnx.ModelProto:
    """The ONNX model (opset 17, float32, dynamic batch) computing what the toolbox computes.
    Nodes are named after the toolbox layers (``convolution0``, ``rect1``, ``sumpool2``, ...);
    the input is "input" in the toolbox's layout, the output "output"."""
    input_shape = tuple(input_shape) if input_shape else infer_input_shape(layers)
    shapes = _shapes(layers, input_shape)
    nodes, inits = [], []
    current, nchw = "input", False
    for layer, shape_in in zip(layers, [input_shape] + shapes[:-1]):
        out = layer.name
        if layer.kind in ("Convolution", "SumPool", "MaxPool") and not nchw:
            nodes.append(helper.make_node("Transpose", [current], [f"{out}_nchw"], name=f"{out}_to_nchw", perm=[0, 3, 1, 2]))
            current, nchw = f"{out}_nchw", True
        if layer.kind == "Linear":
            inits += [numpy_helper.from_array(layer.weights.astype(np.float32), f"{out}_W"),
                      numpy_helper.from_array(layer.bias.astype(np.float32), f"{out}_B")]
            nodes.append(helper.make_node("Gemm", [current, f"{out}_W", f"{out}_B"], [out], name=out))
        elif layer.kind == "Convolution":
            h, w, _, _, s0, s1 = layer.params
            inits += [numpy_helper.from_array(np.ascontiguousarray(layer.weights.transpose(3, 2, 0, 1), np.float32), f"{out}_W"),
                      numpy_helper.from_array(layer.bias.astype(np.float32), f"{out}_B")]
            nodes.append(helper.make_node("Conv", [current, f"{out}_W", f"{out}_B"], [out], name=out,
                                          kernel_shape=[h, w], strides=[s0, s1]))
        elif layer.kind == "SumPool":
            h, w, s0, s1 = layer.params
            channels = shape_in[2]
            inits.append(numpy_helper.from_array(np.full((channels, 1, h, w), 1 / math.sqrt(h * w), np.float32), f"{out}_W"))
            nodes.append(helper.make_node("Conv", [current, f"{out}_W"], [out], name=out,
                                          kernel_shape=[h, w], strides=[s0, s1], group=channels))
        elif layer.kind == "MaxPool":
            h, w, s0, s1 = layer.params
            nodes.append(helper.make_node("MaxPool", [current], [out], name=out, kernel_shape=[h, w], strides=[s0, s1]))
        elif layer.kind == "Flatten":
            if nchw:
                nodes.append(helper.make_node("Transpose", [current], [f"{out}_nhwc"], name=f"{out}_to_nhwc", perm=[0, 2, 3, 1]))
                current, nchw = f"{out}_nhwc", False
            nodes.append(helper.make_node("Flatten", [current], [out], name=out, axis=1))
        else:
            op = {"Rect": "Relu", "Tanh": "Tanh", "SoftMax": "Softmax"}[layer.kind]
            nodes.append(helper.make_node(op, [current], [out], name=out))
        current = out
    if nchw:   # a model that ends spatially returns NHWC, as the toolbox does
        nodes.append(helper.make_node("Transpose", [current], ["output"], name="to_nhwc", perm=[0, 2, 3, 1]))
    else:
        nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *shapes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="exporters.lrp_toolbox")
    onnx.checker.check_model(model)
    return model


def toolbox_composite(layers: Sequence[ToolboxLayer], rule: str = "epsilon", epsilon: float = 1.0, alpha: float = 2.0):
    """The lrp_onnx composite that applies the toolbox's ``lrp(R, rule, param)`` to every
    layer, as its Sequential does: "epsilon" -> Epsilon(epsilon) (z + eps*sign(z), sign(0) = 1,
    bias in z) on Linear/Convolution and Epsilon(epsilon / sqrt(h*w)) on each SumPool Conv (see
    the module docstring); "alphabeta" -> AlphaBeta(alpha, alpha - 1) with the toolbox's 1e-16
    stabilizer (its beta = 1 - alpha is our -beta; positive biases join the positive group).
    MaxPool: "winner", the toolbox's epsilon and alpha-beta LRP of MaxPool (all relevance to
    the maximum; the toolbox splits it evenly among exact ties, lrp_onnx gives it to one)."""
    from lrp_onnx.composites import Composite, Family, Name
    from lrp_onnx.rules import AlphaBeta, Epsilon

    if rule == "epsilon":
        pools = [(Name(f"^{l.name}$"), Epsilon(epsilon / math.sqrt(l.params[0] * l.params[1])))
                 for l in layers if l.kind == "SumPool"]
        return Composite(tuple(pools) + ((Family("all"), Epsilon(epsilon)),), "winner", f"toolbox_epsilon_{epsilon:g}")
    if rule == "alphabeta":
        return Composite(((Family("all"), AlphaBeta(alpha, alpha - 1, epsilon=1e-16)),), "winner", f"toolbox_alpha{alpha:g}")
    raise ValueError(f"rule must be 'epsilon' or 'alphabeta', got {rule!r}")


def convert(path, output, input_shape: Optional[Sequence[int]] = None) -> onnx.ModelProto:
    """Read the toolbox file ``path`` and write its ONNX model to ``output`` (atomically)."""
    from lrp_onnx.files import write_atomically

    model = to_onnx(read(path), input_shape, name=os.path.splitext(os.path.basename(os.fspath(path)))[0])
    write_atomically(output, lambda tmp: onnx.save(model, tmp))
    return model


def _shape_arg(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,32,1, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters.lrp_toolbox", description="LRP Toolbox text model -> ONNX")
    parser.add_argument("model", help="a model file in the LRP Toolbox's plain-text format")
    parser.add_argument("-o", "--output", required=True, help="where to write the ONNX model")
    parser.add_argument("--input-shape", type=_shape_arg, default=None,
                        help="H,W,C (or m) without the batch axis; default: inferred (the smallest square input that fits)")

    def run(args):
        model = convert(args.model, args.output, args.input_shape)
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        out = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        print(f"wrote {args.output}: input 'input' {tuple(dims)}, output 'output' {tuple(out)}")

    return run_cli(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
