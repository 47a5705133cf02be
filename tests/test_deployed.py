"""Deployed formats end to end (README, Deployed formats): a small CNN quantized by onnxruntime
(QDQ per tensor and per channel, QOperator, dynamic), converted to float16 (both ways) and saved
by onnxruntime at EXTENDED, explained through the Python API and as a saved explainer.

Tolerances: the explainer's output is the deployed file's own forward pass (its graph embedded,
lrp_onnx/deployed.py), against onnxruntime's run of the file: 1e-6 of its scale (float16: 2^-11,
the output's last rounding to float16, which onnxruntime's CPU session drops); the relevance
against the float32 original's: Pearson r > 0.99 for int8 (the twin's weights and activations
differ by their rounding), > 0.9999 for float16, equal to 1e-5 of max|R| for the EXTENDED file
(the same arithmetic).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.deployed import TWIN_OUTPUT

RNG = np.random.default_rng(3)
SIZE = 8


def small_cnn():
    def w(*shape):
        return (RNG.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
             helper.make_node("Add", ["r2", "r1"], ["a"]), helper.make_node("GlobalAveragePool", ["a"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    inits = {"w1": w(8, 3, 3, 3), "b1": (RNG.normal(size=8) * 0.1).astype(np.float32), "w2": w(8, 8, 3, 3),
             "b2": (RNG.normal(size=8) * 0.1).astype(np.float32), "lo": np.float32(0), "hi": np.float32(6),
             "g": w(5, 8), "gb": np.zeros(5, np.float32)}
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    folder = tmp_path_factory.mktemp("deployed")
    paths = {"float32": str(folder / "float32.onnx")}
    onnx.save(small_cnn(), paths["float32"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.data, None)

    for name, fmt, per_channel in [("qdq", QuantFormat.QDQ, False), ("qdq_per_channel", QuantFormat.QDQ, True),
                                   ("qoperator", QuantFormat.QOperator, False)]:
        paths[name] = str(folder / f"{name}.onnx")
        quantize_static(paths["float32"], paths[name], Reader(), quant_format=fmt, per_channel=per_channel)
    paths["dynamic"] = str(folder / "dynamic.onnx")
    quantize_dynamic(paths["float32"], paths["dynamic"], op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    float16 = pytest.importorskip("onnxconverter_common.float16")
    for keep in (True, False):
        paths[f"fp16_{keep}"] = str(folder / f"fp16_{keep}.onnx")
        onnx.save(float16.convert_float_to_float16(small_cnn_from(paths["float32"]), keep_io_types=keep), paths[f"fp16_{keep}"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    paths["extended"] = options.optimized_model_filepath = str(folder / "extended.onnx")
    ort.InferenceSession(paths["float32"], options, providers=["CPUExecutionProvider"])
    return paths


def small_cnn_from(path):
    return onnx.load(path)


def run_file(path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    info = session.get_inputs()[0]
    return session.run(None, {info.name: x.astype(np.float16) if info.type == "tensor(float16)" else x})[0].astype(np.float32)


def inputs():
    # float16-representable values, so that a float16 file and its explainer see the same input
    return np.random.default_rng(7).normal(size=(4, 3, SIZE, SIZE)).astype(np.float16).astype(np.float32)


def pearson(a, b):
    return min(np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in zip(a, b))


@pytest.mark.parametrize("fmt,min_r", [("qdq", 0.99), ("qdq_per_channel", 0.99), ("qoperator", 0.99), ("dynamic", 0.99),
                                       ("fp16_True", 0.9999), ("fp16_False", 0.9999)])
def test_quantized_and_float16_files_report_their_own_output(files, fmt, min_r):
    x = inputs()
    reference = lrp_onnx.Explainer(files["float32"]).explain(x)
    ex = lrp_onnx.Explainer(files[fmt])
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger")
                   for n in ex.forward_model.graph.node)
    res = ex.explain(x, target=reference.target)
    deployed = run_file(files[fmt], x)
    # float16: onnxruntime's CPU session runs the embedded float16 nodes as float32 and drops the
    # Cast pairs between them, the last rounding to float16 included: within 2^-11 of the output
    tolerance = 2.0 ** -11 if fmt.startswith("fp16") else 1e-6
    np.testing.assert_allclose(res.output, deployed, atol=tolerance * np.abs(deployed).max(), rtol=0)
    assert np.isfinite(res.relevance).all()
    assert pearson(res.relevance, reference.relevance) > min_r
    # the relevance starts on the twin's output: conservation is measured on it
    twin = ort.InferenceSession(ex.forward_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(res.total, twin[np.arange(len(x)), reference.target], rtol=1e-5)


def test_predicted_class_is_the_deployed_files(files, tmp_path):
    x = inputs()
    ex = lrp_onnx.Explainer(files["qdq"])
    res = ex.explain(x)
    np.testing.assert_array_equal(res.target, run_file(files["qdq"], x).argmax(axis=1))
    ex.save(tmp_path / "explainer.onnx")
    session = ort.InferenceSession(str(tmp_path / "explainer.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names[:2] == ["y", "lrp_relevance"] and TWIN_OUTPUT in names
    out = dict(zip(names, session.run(None, {"x": x, "lrp_target_mask": np.full((len(x), 5), np.nan, np.float32)})))
    np.testing.assert_allclose(out["y"], res.output, rtol=0, atol=1e-6 * np.abs(res.output).max())
    np.testing.assert_allclose(out["lrp_relevance"], res.relevance, rtol=1e-5, atol=1e-6 * np.abs(res.relevance).max())


def test_extended_file_explains_as_the_original(files):
    x = inputs()
    ops = {n.op_type for n in onnx.load(files["extended"]).graph.node}
    assert "FusedConv" in ops
    reference = lrp_onnx.Explainer(files["float32"]).explain(x)
    res = lrp_onnx.Explainer(files["extended"]).explain(x)
    np.testing.assert_allclose(res.relevance, reference.relevance, rtol=1e-4, atol=1e-5 * np.abs(reference.relevance).max())
    np.testing.assert_allclose(res.output, reference.output, rtol=1e-5, atol=1e-6 * np.abs(reference.output).max())
