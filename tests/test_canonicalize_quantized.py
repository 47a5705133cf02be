"""The deployed-format passes (README, Deployed formats) against onnxruntime on the original.

Tolerances, stated per pass:
- fold_dequantize_constants, unfuse_ort_contrib: exact arithmetic, float32 reordering only:
  1e-6 of the output's scale.
- expand_qoperators (QOperator -> DQ -> float op -> Q): the same sums rounded once at the
  output; float32 accumulation can put a value on the other side of a rounding boundary, so an
  output may differ by one step: |diff| <= y_scale (+1e-6 of the scale).
- qdq_to_clip and the dynamic-quantization chains: rounding to the integer grid is the only
  change, |diff| <= scale / 2 per quantized tensor, propagated through each layer after it by
  the sum of |W| over its inputs (a Clip, ReLU or max is 1-Lipschitz).
- float16_to_float32: the float16 model rounds every intermediate to 11 significant bits;
  against float32 arithmetic on the same weights 1e-2 of the output's scale.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.canonicalize import (
    expand_qoperators, float16_to_float32, fold_dequantize_constants, qdq_to_clip, unfuse_ort_contrib,
)
from lrp_onnx.errors import LRPError
from lrp_onnx.load import infer_shapes

RNG = np.random.default_rng(0)
MS = helper.make_opsetid("com.microsoft", 1)


def make(nodes, inputs, outputs, inits=(), ms=False):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)] + ([MS] if ms else []))
    proto.ir_version = 8
    infer_shapes(proto)
    return proto


def run(proto, x):
    """onnxruntime with its graph optimizations off: ONNX's semantics of the graph as written (its
    QDQ fusions compute some hand-written QDQ graphs differently, e.g. two Gemms with float weights
    between Q/DQ pairs)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def apply(passes, proto):
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    changed = [p(out) for p in passes]
    assert changed[0], "the first pass must change the model"
    onnx.checker.check_model(out)
    return out


def ops(proto):
    return [n.op_type for n in proto.graph.node]


def f32(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def quantize(w, axis=None, dtype=np.int8):
    """Symmetric int8 (per tensor, or per channel along ``axis``): (q, scale, zero point)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    scale = (np.abs(w).max(axis=reduce) / 127.0).astype(np.float32)
    shaped = scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    q = np.clip(np.round(w / shaped), -127, 127).astype(dtype)
    return q, scale, np.zeros(scale.shape, dtype)


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
XC = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])


@pytest.mark.parametrize("axis", [None, 0])
def test_fold_dequantize_constants_per_tensor_and_per_channel(axis):
    w = f32(5, 3, 3, 3)
    q, s, z = quantize(w, axis)
    dq = helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], **({"axis": axis} if axis is not None else {}))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    proto = make([dq, conv], [XC], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 6, 6])],
                 {"wq": q, "ws": s, "wz": z})
    out = apply([fold_dequantize_constants], proto)
    assert ops(out) == ["Conv"]
    x = f32(2, 3, 6, 6)
    ref = run(proto, x)
    np.testing.assert_allclose(run(out, x), ref, atol=1e-6 * np.abs(ref).max())


def _qdq(name, tensor, scale, zp, out):
    return [helper.make_node("QuantizeLinear", [tensor, scale, zp], [name]),
            helper.make_node("DequantizeLinear", [name, scale, zp], [out])]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qdq_to_clip_is_the_clamp_within_half_a_step(dtype):
    """x -> Gemm(W1) -> Q/DQ (s1, z1) -> Gemm(W2) -> Q/DQ (s2, z2) -> y: the pairs become Clips at
    the integer ranges; the output is within s2/2 + sum|W2| s1/2 of the quantized model's."""
    w1, w2 = f32(6, 4), f32(3, 6)
    s1, s2 = np.float32(0.05), np.float32(0.04)
    z1 = np.asarray(-20 if dtype == np.int8 else 100, dtype)
    z2 = np.asarray(5 if dtype == np.int8 else 128, dtype)
    nodes = ([helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1)] + _qdq("hq", "h", "s1", "z1", "hd")
             + [helper.make_node("Gemm", ["hd", "w2"], ["o"], transB=1)] + _qdq("oq", "o", "s2", "z2", "y"))
    proto = make(nodes, [X], [Y], {"w1": w1, "w2": w2, "s1": s1, "z1": z1, "s2": s2, "z2": z2})
    out = apply([qdq_to_clip], proto)
    assert ops(out) == ["Gemm", "Clip", "Gemm", "Clip"]
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    clip = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    bounds = [(float(clip[n.input[1]]), float(clip[n.input[2]])) for n in out.graph.node if n.op_type == "Clip"]
    np.testing.assert_allclose(bounds[0], [(lo - int(z1)) * s1, (hi - int(z1)) * s1], rtol=1e-6)
    x = f32(64, 4, scale=3.0)   # wide enough that both clamps are active somewhere
    ref, got = run(proto, x), run(out, x)
    bound = s2 / 2 + np.abs(w2).sum(axis=1) * s1 / 2
    assert np.all(np.abs(got - ref) <= bound + 1e-6)
    h = np.clip(x @ w1.T, (lo - int(z1)) * s1, (hi - int(z1)) * s1)
    assert (h == (lo - int(z1)) * s1).any() or (h == (hi - int(z1)) * s1).any()


def test_qdq_on_the_model_input_is_read_as_the_identity():
    w = f32(3, 4)
    nodes = _qdq("xq", "x", "s", "z", "xd") + [helper.make_node("Gemm", ["xd", "w"], ["y"], transB=1)]
    proto = make(nodes, [X], [Y], {"s": np.float32(0.1), "z": np.int8(0), "w": w})
    out = apply([qdq_to_clip], proto)
    assert ops(out) == ["Identity", "Gemm"]
    x = f32(8, 4)   # within the input's range [-12.8, 12.7]: only the rounding differs
    assert np.all(np.abs(run(out, x) - run(proto, x)) <= np.abs(w).sum(axis=1) * 0.05 + 1e-6)


def test_qdq_to_clip_refuses_differing_parameters():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "s2", "z"], ["y"])]
    proto = make(nodes, [X], [Y], {"w": f32(3, 4), "s": np.float32(0.1), "s2": np.float32(0.2), "z": np.int8(0)})
    assert not qdq_to_clip(proto)


def _qconv_model(per_channel):
    """QuantizeLinear -> QLinearConv (bias) -> MaxPool on int8 -> QLinearAdd -> QLinearGlobalAveragePool
    -> Flatten -> QGemm -> DequantizeLinear: the QOperator format of onnxruntime's quantizer."""
    w = f32(4, 3, 3, 3, scale=0.5)
    wq, ws, wz = quantize(w, 0 if per_channel else None)
    xs, xz = np.float32(0.03), np.int8(-3)
    cs, cz = np.float32(0.05), np.int8(-10)
    bias = np.round(f32(4) / (xs * ws)).astype(np.int32)
    g = f32(5, 4, scale=0.5)
    gq, gs, gz = quantize(g, 0 if per_channel else None)
    ps, pz = np.float32(0.04), np.int8(0)
    os_, oz = np.float32(0.06), np.int8(2)
    gb = np.round(f32(5) / (ps * gs)).astype(np.int32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "cs", "cz", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("QLinearAdd", ["m", "cs", "cz", "c", "cs", "cz", "as", "az"], ["a"], domain="com.microsoft"),
        helper.make_node("QLinearGlobalAveragePool", ["a", "as", "az", "ps", "pz"], ["p"], domain="com.microsoft",
                         channels_last=0),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("QGemm", ["f", "ps", "pz", "gq", "gs", "gz", "gb", "os", "oz"], ["o"], domain="com.microsoft",
                         transB=1),
        helper.make_node("DequantizeLinear", ["o", "os", "oz"], ["y"]),
    ]
    inits = {"xs": xs, "xz": xz, "wq": wq, "ws": ws, "wz": wz, "cs": cs, "cz": cz, "b": bias,
             "as": np.float32(0.07), "az": np.int8(-20), "ps": ps, "pz": pz, "gq": gq, "gs": gs, "gz": gz,
             "gb": gb, "os": os_, "oz": oz}
    return make(nodes, [XC], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits, ms=True)


@pytest.mark.parametrize("per_channel", [False, True])
def test_expand_qoperators_keeps_the_quantized_function(per_channel):
    proto = _qconv_model(per_channel)
    out = apply([expand_qoperators], proto)
    assert not any(o.startswith("QLinear") or o == "QGemm" for o in ops(out))
    assert {"Conv", "MaxPool", "Add", "GlobalAveragePool", "Gemm"} <= set(ops(out))
    x = f32(16, 3, 6, 6)
    ref, got = run(proto, x), run(out, x)
    assert np.abs(got - ref).max() <= 0.06 + 1e-6 * np.abs(ref).max()   # one output step at most
    assert np.mean(got == ref) > 0.9


def test_qoperator_model_becomes_float_ops_and_compiles():
    proto = _qconv_model(True)
    ex = lrp_onnx.Explainer(proto, composite="epsilon_plus")
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops(ex.forward_model))
    res = ex.explain(f32(2, 3, 6, 6))
    assert np.isfinite(res.relevance).all()


def test_qlinear_matmul_and_mul():
    a = f32(4, 3)
    aq, as_, az = quantize(a)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "aq", "as", "az", "ms", "mz"], ["m"]),
             helper.make_node("QLinearMul", ["m", "ms", "mz", "m", "ms", "mz", "ys", "yz"], ["p"], domain="com.microsoft"),
             helper.make_node("DequantizeLinear", ["p", "ys", "yz"], ["y"])]
    inits = {"xs": np.float32(0.02), "xz": np.uint8(128), "aq": aq, "as": as_, "az": az, "ms": np.float32(0.03),
             "mz": np.uint8(120), "ys": np.float32(0.05), "yz": np.uint8(10)}
    proto = make(nodes, [X], [Y], inits, ms=True)
    out = apply([expand_qoperators], proto)
    assert {"MatMul", "Mul"} <= set(ops(out))
    x = f32(16, 4)
    assert np.abs(run(out, x) - run(proto, x)).max() <= 0.05 + 1e-6


def test_dynamic_quantization_chain_becomes_a_float_conv(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    w, b = f32(4, 3, 3, 3), f32(4)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "g"], ["y"])]
    g = f32(144, 3, scale=0.1)
    proto = make(nodes, [XC], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], {"w": w, "b": b, "g": g})
    onnx.save(proto, tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), op_types_to_quantize=["Conv", "MatMul"])
    quantized = onnx.load(tmp_path / "q.onnx")
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= set(ops(quantized))
    from lrp_onnx.canonicalize import constants_to_initializers
    constants_to_initializers(quantized)
    infer_shapes(quantized)
    out = apply([expand_qoperators], quantized)
    assert ops(out) == ["Conv", "Relu", "Flatten", "MatMul"]
    x = f32(8, 3, 6, 6)
    ref, got = run(quantized, x), run(out, x)
    # rounding x to its grid (step = range / 255) and then the ReLU output to its own grid
    x_step = (np.maximum(x.max(), 0) - np.minimum(x.min(), 0)) / 255
    conv_err = np.abs(w).sum(axis=(1, 2, 3)).max() * x_step / 2
    r = np.maximum(run(make(nodes[:3], [XC], [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 144])],
                            {"w": w, "b": b}), x), 0)
    r_step = (r.max() + conv_err) / 255
    bound = np.abs(g).sum(axis=0).max() * (conv_err + r_step / 2)
    assert np.abs(got - ref).max() <= bound + 1e-5


ACTIVATIONS = [("Relu", []), ("Clip", [0.0, 6.0]), ("LeakyRelu", [0.1]), ("Sigmoid", []), ("Tanh", []),
               ("HardSigmoid", [0.2, 0.5]), ("", [])]


@pytest.mark.parametrize("activation,params", ACTIVATIONS)
def test_unfuse_fused_conv(activation, params):
    attrs = {"activation": activation, "activation_params": params} if activation else {}
    attrs = {k: v for k, v in attrs.items() if v != []}
    nodes = [helper.make_node("Conv", ["x", "v"], ["z"]),   # the residual Z: shaped like the output
             helper.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain="com.microsoft", pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3], **attrs)]
    yv = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])
    proto = make(nodes, [XC], [yv], {"w": f32(4, 3, 3, 3), "b": f32(4), "v": f32(4, 3, 1, 1)}, ms=True)
    out = apply([unfuse_ort_contrib], proto)
    assert "FusedConv" not in ops(out) and ops(out)[:3] == ["Conv", "Conv", "Add"]
    x = f32(2, 3, 6, 6)
    ref = run(proto, x)
    np.testing.assert_allclose(run(out, x), ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"])
def test_unfuse_fused_gemm(activation):
    node = helper.make_node("FusedGemm", ["x", "w", "b"], ["y"], domain="com.microsoft", transB=1, alpha=0.7, beta=1.3,
                            activation=activation, **({"activation_alpha": 0.2} if activation == "LeakyRelu" else {}),
                            **({"activation_alpha": 0.2, "activation_beta": 0.5} if activation == "HardSigmoid" else {}))
    proto = make([node], [X], [Y], {"w": f32(3, 4), "b": f32(3)}, ms=True)
    out = apply([unfuse_ort_contrib], proto)
    assert ops(out) == ["Gemm", activation]
    x = f32(5, 4)
    np.testing.assert_allclose(run(out, x), run(proto, x), rtol=1e-5, atol=1e-6)


def _small_cnn():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    return make(nodes, [XC], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                {"w": f32(8, 3, 3, 3), "b": f32(8), "g": f32(3, 8), "gb": f32(3)})


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_float16_model_is_computed_in_float32(keep_io_types):
    float16 = pytest.importorskip("onnxconverter_common.float16")
    original = _small_cnn()
    proto = float16.convert_float_to_float16(original, keep_io_types=keep_io_types)
    infer_shapes(proto)
    out = apply([float16_to_float32], proto)
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(t.data_type == TensorProto.FLOAT for t in out.graph.initializer if t.data_type in (1, 10))
    x = f32(4, 3, 6, 6)
    ref = run(proto, x if keep_io_types else x.astype(np.float16)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), ref, atol=1e-2 * np.abs(ref).max())
    ex = lrp_onnx.Explainer(proto)
    res = ex.explain(x)
    base = lrp_onnx.Explainer(original).explain(x, target=res.target)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(res.relevance, base.relevance)]
    assert min(corr) > 0.999


def test_nchwc_file_is_refused_with_what_to_do(tmp_path):
    proto = _small_cnn()
    onnx.save(proto, tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "all.onnx")
    ort.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(tmp_path / "all.onnx")
    if not any(n.domain == "com.microsoft.nchwc" for n in saved.graph.node):
        pytest.skip("onnxruntime wrote no NCHWc op on this CPU")
    with pytest.raises(LRPError, match="ORT_ENABLE_BASIC"):
        lrp_onnx.Explainer(str(tmp_path / "all.onnx"))


def test_unread_quantization_is_refused_with_what_to_do():
    """A per-channel activation quantization stays a Q/DQ pair: refused, naming the ops and
    saying to explain the float32 original."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1),
             helper.make_node("GlobalAveragePool", ["d"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    proto = make(nodes, [XC], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                 {"w": f32(4, 3, 1, 1), "s": np.full(4, 0.1, np.float32), "z": np.zeros(4, np.int8)})
    with pytest.raises(LRPError, match="QuantizeLinear.*quantized from"):
        lrp_onnx.Explainer(proto)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_qgemm_with_alpha_and_float_output(alpha):
    g = f32(3, 4)
    gq, gs, gz = quantize(g, 0)
    xs = np.float32(0.02)
    bias = np.round(f32(3) / (xs * gs)).astype(np.int32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QGemm", ["xq", "xs", "xz", "gq", "gs", "gz", "gb"], ["y"], domain="com.microsoft",
                              transB=1, alpha=alpha)]
    proto = make(nodes, [X], [Y], {"xs": xs, "xz": np.int8(0), "gq": gq, "gs": gs, "gz": gz, "gb": bias}, ms=True)
    out = apply([expand_qoperators], proto)
    assert "Gemm" in ops(out)
    x = f32(8, 4)
    ref = run(proto, x)
    np.testing.assert_allclose(run(out, x), ref, atol=1e-5 * np.abs(ref).max())


def test_fusion_left_in_place_is_refused_with_what_to_do():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1), helper.make_node("FastGelu", ["h"], ["y"], domain="com.microsoft")]
    proto = make(nodes, [X], [Y], {"w": f32(3, 4)}, ms=True)
    with pytest.raises(LRPError, match="FastGelu.*ORT_ENABLE_BASIC"):
        lrp_onnx.Explainer(proto)


def test_bfloat16_weights_and_casts_become_float32():
    """onnxruntime's CPU has no bfloat16 Gemm, so this one is checked against the float32 model
    with the same (bfloat16-rounded) weights: after the pass it is that model."""
    import ml_dtypes

    w = f32(3, 4).astype(ml_dtypes.bfloat16)
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16), helper.make_node("Gemm", ["xb", "w"], ["yb"], transB=1),
             helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "bf16", [X], [Y], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = apply([float16_to_float32], proto)
    assert all(t.data_type == TensorProto.FLOAT for t in out.graph.initializer)
    assert all(a.i == TensorProto.FLOAT for n in out.graph.node for a in n.attribute if a.name == "to")
    x = f32(5, 4)
    np.testing.assert_allclose(run(out, x), x @ w.astype(np.float32).T, rtol=1e-5, atol=1e-6)
