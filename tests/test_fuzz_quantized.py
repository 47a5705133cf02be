"""Random QDQ-quantized networks against a numpy oracle of the dequantized network (hypothesis).

A network is 1-2 Conv layers (random kernel, stride, padding), Flatten and 1-2 Gemm layers.
Every weight is int8 behind a DequantizeLinear (per tensor, or per output channel), a bias is
float or int32 (scale x_scale * w_scale, as onnxruntime's quantizer writes it), and every
activation between layers goes through a QuantizeLinear -> DequantizeLinear pair with a random
scale, zero point and type (int8 or uint8), optionally after a Relu (the QDQ quantizer removes
it: then the pair's range does the clamping); the model input and the output may have a pair too.

The oracle (numpy, float64) is the network lrp_onnx must explain: dequantized weights
(q - z) * s, each activation pair the clamp to [(qmin - z) s, (qmax - z) s], the input pair
the identity, and LRP-epsilon, R_j = a_j sum_k W_kj R_k / stab(z_k), stab(z) = z + eps sgn(z)
(sgn(0) = +1), the Clips and Relus passing relevance unchanged; every linear layer is a dense
matrix built from the ONNX definition of Conv by index arithmetic.

Tolerances: relevance as tests/test_fuzz.py (rtol 1e-4, atol 1e-4 of max|R|; an example whose
float32 oracle deviates from its float64 one by more than 1e-5 of the scale is ill-conditioned
and rejected). The explainer's output against onnxruntime's run of the quantized file: within
the propagated rounding bound (each pair adds scale / 2, each layer multiplies by its largest
row sum of |W|), plus 1e-5 of the scale.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx import rules as R

FUZZ = settings(deadline=None, derandomize=True, max_examples=50, suppress_health_check=[HealthCheck.too_slow])
RTOL, ATOL_SCALE, CONDITION = 1e-4, 1e-4, 1e-5
RANGES = {np.int8: (-128, 127), np.uint8: (0, 255)}


def conv_matrix(w, c, h, stride, pad):
    """The dense (C*H*W, M*Ho*Wo) matrix of Conv(w) on a (c, h, h) input."""
    m, _, k, _ = w.shape
    out = (h + 2 * pad - k) // stride + 1
    mat = np.zeros((c, h, h, m, out, out))
    for o in range(m):
        for i in range(out):
            for j in range(out):
                for ci in range(c):
                    for a in range(k):
                        for b in range(k):
                            y, x = i * stride + a - pad, j * stride + b - pad
                            if 0 <= y < h and 0 <= x < h:
                                mat[ci, y, x, o, i, j] += w[o, ci, a, b]
    return mat.reshape(c * h * h, m * out * out), out


class Builder:
    def __init__(self, rng):
        self.rng, self.nodes, self.inits, self.k = rng, [], {}, 0

    def name(self, hint):
        self.k += 1
        return f"{hint}{self.k}"

    def const(self, value, hint):
        name = self.name(hint)
        self.inits[name] = value
        return name

    def weight(self, w, per_channel):
        """int8 weight behind a DequantizeLinear; returns (tensor, the dequantized value, its scale)."""
        axes = tuple(range(1, w.ndim))
        scale = (np.abs(w).max(axis=axes) / 127).astype(np.float32) if per_channel else np.float32(np.abs(w).max() / 127)
        shaped = scale.reshape(-1, *([1] * (w.ndim - 1))) if per_channel else scale
        q = np.clip(np.round(w / shaped), -127, 127).astype(np.int8)
        zp = np.zeros(scale.shape, np.int8)
        out = self.name("w")
        self.nodes.append(helper.make_node("DequantizeLinear", [self.const(q, "wq"), self.const(scale, "ws"), self.const(zp, "wz")],
                                           [out], **({"axis": 0} if per_channel else {})))
        return out, (q.astype(np.float64) * shaped.astype(np.float64)), scale

    def bias(self, b, x_scale, w_scale, quantized):
        if not quantized or x_scale is None:
            return self.const(b.astype(np.float32), "b"), b.astype(np.float32).astype(np.float64)
        scale = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32).reshape(-1)
        scale = np.broadcast_to(scale, b.shape).astype(np.float32) if scale.size > 1 else scale.reshape(())
        q = np.round(b / scale).astype(np.int32)
        out = self.name("bias")
        self.nodes.append(helper.make_node("DequantizeLinear", [self.const(q, "bq"), self.const(scale, "bs"),
                                                                self.const(np.zeros(scale.shape, np.int32), "bz")],
                                           [out], **({"axis": 0} if scale.ndim else {})))
        return out, q.astype(np.float64) * scale.astype(np.float64)

    def qdq(self, x, scale, zp, dtype):
        q, out = self.name("q"), self.name("dq")
        s, z = self.const(np.float32(scale), "s"), self.const(np.asarray(zp, dtype), "z")
        self.nodes += [helper.make_node("QuantizeLinear", [x, s, z], [q]), helper.make_node("DequantizeLinear", [q, s, z], [out])]
        return out


@st.composite
def networks(draw):
    return {
        "seed": draw(st.integers(0, 2 ** 16)), "channels": draw(st.integers(1, 3)), "size": draw(st.integers(3, 6)),
        "convs": draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1)),
                               min_size=1, max_size=2)),
        "dense": draw(st.lists(st.integers(2, 5), min_size=1, max_size=2)),
        "per_channel": draw(st.booleans()), "quantized_bias": draw(st.booleans()),
        "acts": draw(st.lists(st.tuples(st.sampled_from([np.int8, np.uint8]), st.floats(0.01, 0.2),
                                        st.floats(0.0, 1.0), st.booleans()), min_size=4, max_size=4)),
        "input_qdq": draw(st.booleans()), "output_qdq": draw(st.booleans()),
        "epsilon": draw(st.sampled_from([1e-6, 1e-2, 0.1])), "batch": draw(st.integers(1, 3)),
    }


def make_case(spec):
    """(ONNX model, oracle layers, input shape, rounding bound terms)."""
    rng = np.random.default_rng(spec["seed"])
    b = Builder(rng)
    c, h = spec["channels"], spec["size"]
    x_name, x_scale, layers, bound = "x", None, [], []   # layers: (kind, matrix, bias, clamp)
    if spec["input_qdq"]:
        x_scale = 0.05
        x_name = b.qdq("x", x_scale, 0, np.int8)
        bound.append(("pair", x_scale / 2))
    shapes = [(c, h, h)]
    acts = iter(spec["acts"])
    specs = [("conv", s) for s in spec["convs"]] + [("gemm", n) for n in spec["dense"]]
    for position, (kind, layer) in enumerate(specs):
        last = position == len(specs) - 1
        if kind == "conv":
            m, k, stride, pad = layer
            ch, hh, _ = shapes[-1]
            k = min(k, hh + 2 * pad)
            w = rng.normal(size=(m, ch, k, k)) / np.sqrt(ch * k * k)
            wname, wdeq, wscale = b.weight(w, spec["per_channel"])
            bname, bdeq = b.bias(rng.normal(size=m) * 0.3, x_scale, wscale, spec["quantized_bias"])
            out = b.name("conv")
            b.nodes.append(helper.make_node("Conv", [x_name, wname, bname], [out], strides=[stride] * 2, pads=[pad] * 4))
            mat, side = conv_matrix(wdeq, ch, hh, stride, pad)
            layers.append(("linear", mat, np.repeat(bdeq, side * side), None))
            shapes.append((m, side, side))
        else:
            if len(shapes[-1]) == 3:
                flat = b.name("flat")
                b.nodes.append(helper.make_node("Flatten", [x_name], [flat]))
                x_name = flat
                shapes.append((int(np.prod(shapes[-1])),))
            n = layer
            w = rng.normal(size=(n, shapes[-1][0])) / np.sqrt(shapes[-1][0])
            wname, wdeq, wscale = b.weight(w, spec["per_channel"])
            bname, bdeq = b.bias(rng.normal(size=n) * 0.3, x_scale, wscale, spec["quantized_bias"])
            out = b.name("gemm")
            b.nodes.append(helper.make_node("Gemm", [x_name, wname, bname], [out], transB=1))
            mat = wdeq.T
            layers.append(("linear", mat, bdeq, None))
            shapes.append((n,))
        bound.append(("layer", np.abs(mat).sum(axis=0).max()))
        x_name, x_scale = out, None
        if not last or spec["output_qdq"]:
            dtype, scale, where, relu = next(acts)
            lo_q, hi_q = RANGES[dtype]
            zp = int(round(lo_q + where * (hi_q - lo_q)))
            if relu:
                r = b.name("relu")
                b.nodes.append(helper.make_node("Relu", [x_name], [r]))
                x_name = r
                layers.append(("relu", None, None, None))
            x_name = b.qdq(x_name, scale, zp, dtype)
            x_scale = scale
            layers.append(("clamp", None, None, ((lo_q - zp) * np.float64(np.float32(scale)), (hi_q - zp) * np.float64(np.float32(scale)))))
            bound.append(("pair", scale / 2))
    b.nodes.append(helper.make_node("Identity", [x_name], ["y"]))
    graph = helper.make_graph(b.nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", shapes[-1][0]])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in b.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, layers, (c, h, h), bound


def oracle(layers, x, mask, eps, dtype):
    acts = [x.reshape(len(x), -1).astype(dtype)]
    for kind, mat, bias, clamp in layers:
        a = acts[-1]
        if kind == "linear":
            acts.append(a @ mat.astype(dtype) + bias.astype(dtype))
        elif kind == "relu":
            acts.append(np.maximum(a, 0))
        else:
            acts.append(np.clip(a, dtype(clamp[0]), dtype(clamp[1])))
    r = acts[-1] * mask.astype(dtype)
    for (kind, mat, bias, _), a in zip(reversed(layers), reversed(acts[:-1])):
        if kind == "linear":
            z = a @ mat.astype(dtype) + bias.astype(dtype)
            s = r / (z + dtype(eps) * np.where(z >= 0, 1.0, -1.0).astype(dtype))
            r = a * (s @ mat.T.astype(dtype))
    return acts[-1], r


def quantized_run(model, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # ONNX's QDQ semantics as written
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@FUZZ
@given(spec=networks())
def test_random_qdq_networks_match_the_dequantized_oracle(spec):
    model, layers, shape, bound = make_case(spec)
    x = np.random.default_rng(spec["seed"] + 1).uniform(-1, 1, size=(spec["batch"], *shape)).astype(np.float32)
    ex = lrp_onnx.Explainer(model, composite=Composite(((Family("all"), R.Epsilon(spec["epsilon"])),)))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in ex.forward_model.graph.node)
    res = ex.explain(x)
    out64, _ = oracle(layers, x, np.zeros(1), spec["epsilon"], np.float64)
    mask = np.zeros_like(out64)
    mask[np.arange(len(x)), res.target] = 1.0
    out64, ref = oracle(layers, x, mask, spec["epsilon"], np.float64)
    _, ref32 = oracle(layers, x, mask, spec["epsilon"], np.float32)
    scale = float(np.abs(ref).max()) or 1.0
    assume(np.abs(ref32 - ref).max() <= CONDITION * scale)
    np.testing.assert_allclose(res.relevance.reshape(len(x), -1), ref, rtol=RTOL, atol=ATOL_SCALE * scale)

    # the explained output: the rounding of each quantized tensor, propagated, from the quantized model's own
    err = 0.0
    for kind, value in bound:
        err = err * value if kind == "layer" else err + value
    out_scale = float(np.abs(out64).max()) or 1.0
    quantized = quantized_run(model, x)
    assert np.abs(quantized - out64).max() <= err + 1e-5 * out_scale
    assert np.abs(res.output - quantized).max() <= err + 1e-5 * out_scale
