"""Explain the model that is deployed: resnet18 and mobilenet_v2 (exporters/zoo.py: seeded random
weights, calibrated BatchNorm, 64x64) in the formats they are deployed in, against the float32
original. Prints the README's "Deployed formats" table (markdown).

    .venv/bin/python benchmarks/deployed.py [--models resnet18 mobilenet_v2] [--size 64] [--dir DIR]

Formats: float32 (the reference), int8 QDQ per tensor and per channel and QOperator
(onnxruntime.quantization.quantize_static, 8 seeded N(0, 1) calibration images, after
quant_pre_process), dynamic int8 (quantize_dynamic, its defaults), float16
(onnxconverter-common's convert_float_to_float16, keep_io_types True and False), and the files
onnxruntime writes with SessionOptions.optimized_model_filepath at ORT_ENABLE_BASIC, EXTENDED
and ALL. Columns: whether it compiles (else the first line of the refusal); the explainer's
output against onnxruntime's run of that very file and the relevance twin's (the canonical
float model the relevance is computed on, Explainer.forward_model), both max|diff| / max|out|;
the heatmap (input relevance, epsilon_gamma_box, the float32 original's predicted class)
against the float32 original's: Pearson r and relative L2 ||R - R32|| / ||R32||, means over a
batch of 4 seeded N(0, 1) images (rounded to float16, so that a float16 file sees the explainer's input).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

FORMATS = ["float32", "qdq", "qdq_per_channel", "qoperator", "dynamic", "fp16_keep_io", "fp16", "ort_basic",
           "ort_extended", "ort_all"]
LABELS = {"float32": "float32 (reference)", "qdq": "int8 QDQ, per tensor", "qdq_per_channel": "int8 QDQ, per channel",
          "qoperator": "int8 QOperator", "dynamic": "dynamic int8", "fp16_keep_io": "float16, keep_io_types=True",
          "fp16": "float16, keep_io_types=False", "ort_basic": "onnxruntime BASIC", "ort_extended": "onnxruntime EXTENDED",
          "ort_all": "onnxruntime ALL (NCHWc)"}


def build(name: str, size: int, folder: str) -> dict:
    """{format: path} for ``name`` (files already in ``folder`` are reused)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from exporters.zoo import export_zoo_model

    paths = {f: os.path.join(folder, f"{name}.{f}.onnx") for f in FORMATS}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    export_zoo_model(name, paths["float32"], size=size)
    input_name = onnx.load(paths["float32"]).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{input_name: rng.normal(size=(1, 3, size, size)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.data, None)

    pre = os.path.join(folder, f"{name}.pre.onnx")
    quant_pre_process(paths["float32"], pre)
    quantize_static(pre, paths["qdq"], Reader(), quant_format=QuantFormat.QDQ)
    quantize_static(pre, paths["qdq_per_channel"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    quantize_static(pre, paths["qoperator"], Reader(), quant_format=QuantFormat.QOperator)
    quantize_dynamic(pre, paths["dynamic"])
    from onnxconverter_common import float16
    onnx.save(float16.convert_float_to_float16(onnx.load(paths["float32"]), keep_io_types=True), paths["fp16_keep_io"])
    onnx.save(float16.convert_float_to_float16(onnx.load(paths["float32"]), keep_io_types=False), paths["fp16"])
    levels = {"ort_basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "ort_extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "ort_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    for fmt, level in levels.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.optimized_model_filepath = paths[fmt]
        ort.InferenceSession(paths["float32"], options, providers=["CPUExecutionProvider"])
    return paths


def run_file(path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    info = session.get_inputs()[0]
    feed = x.astype(np.float16) if info.type == "tensor(float16)" else x
    return session.run(None, {info.name: feed})[0].astype(np.float32)


def run_model(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def row(name: str, fmt: str, path: str, x: np.ndarray, reference, target) -> str:
    import lrp_onnx

    try:
        ex = lrp_onnx.Explainer(path)
    except Exception as exc:  # a refusal: its first line
        text = str(exc).splitlines()
        why = next((line.strip(" -") for line in text if "NCHWc" in line), text[-1] if len(text) > 1 else text[0])
        return f"| {name} | {LABELS[fmt]} | no: {why.split(';')[-1].strip()} | | | | |"
    res = ex.explain(x, target=target)
    deployed = run_file(path, x)
    twin = run_model(ex.forward_model, x)
    r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(res.relevance, reference.relevance)]
    l2 = [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(res.relevance, reference.relevance)]
    agree = float(np.mean(deployed.argmax(1) == reference.output.argmax(1)))
    return (f"| {name} | {LABELS[fmt]} | yes | {rel(res.output, deployed):.1e} | {rel(twin, deployed):.1e} "
            f"| {np.mean(r):.5f} / {np.mean(l2):.4f} | {agree:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where the files are written (and reused); default: a temporary folder")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import lrp_onnx

    folder = args.dir or tempfile.mkdtemp(prefix="lrp_deployed_")
    os.makedirs(folder, exist_ok=True)
    # float16-representable values: a float16 file and its explainer (float32 input) see the same input
    x = np.random.default_rng(1).normal(size=(4, 3, args.size, args.size)).astype(np.float16).astype(np.float32)
    print("| model | format | compiles | explainer output vs the file's onnxruntime output | relevance twin's output vs the file's "
          "| heatmap vs float32: Pearson r / rel. L2 | deployed file's top-1 = float32's |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        paths = build(name, args.size, folder)
        base = lrp_onnx.Explainer(paths["float32"])
        reference = base.explain(x)
        for fmt in FORMATS:
            print(row(name, fmt, paths[fmt], x, reference, reference.target), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
