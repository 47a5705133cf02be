"""The torchvision CNN zoo explained end to end: export (seeded random weights, calibrated
BatchNorm statistics), compile with each composite, explain a batch of 2, and check that the
relevance is finite and that the explainer's model output equals onnxruntime's forward of the
original model.

    .venv/bin/python benchmarks/zoo.py [--models resnet18,...] [--size N] [--markdown]

Prints one row per (model, composite): nodes and op types of the exported model, compile
seconds (Explainer construction: load, canonicalize, build, session), explain seconds (one
batch of 2), and sum(R_in) / R_out per image.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import lrp_onnx  # noqa: E402
from exporters.zoo import FULL_SIZE, ZOO, export_zoo_model  # noqa: E402

COMPOSITES = ("epsilon_gamma_box", "epsilon_plus_flat")
#: The explainer runs the canonicalized forward (BatchNorm folded into convs), so its logits
#: differ from the original's by float32 rounding only.
OUTPUT_RTOL = 1e-4


def explain_model(name: str, path: str, size: int):
    """Rows (dict) for every composite; raises if the relevance is not finite or the output
    differs from the original model's."""
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    proto = onnx.load(path)
    rows = []
    for composite in COMPOSITES:
        start = time.perf_counter()
        explainer = lrp_onnx.Explainer(path, composite, providers=["CPUExecutionProvider"])
        compiled = time.perf_counter() - start
        start = time.perf_counter()
        result = explainer.explain(x)
        explained = time.perf_counter() - start
        if not np.isfinite(result.relevance).all():
            raise AssertionError(f"{name} {composite}: relevance is not finite")
        error = float(np.abs(result.output - forward).max())
        if error > OUTPUT_RTOL * float(np.abs(forward).max()):
            raise AssertionError(f"{name} {composite}: explainer output differs from the forward by {error:.3g}")
        rows.append(dict(model=name, composite=composite, nodes=len(proto.graph.node),
                         op_types=len({n.op_type for n in proto.graph.node}), compile_s=compiled,
                         explain_s=explained, conservation=result.conservation.tolist()))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names")
    parser.add_argument("--size", type=int, default=None, help="input size (default: 224, 299 for inception_v3)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    failures = 0
    header = ("model", "composite", "nodes", "op types", "compile s", "explain s", "sum R_in / R_out")
    print("| " + " | ".join(header) + " |" if args.markdown else "  ".join(header), flush=True)
    if args.markdown:
        print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            size = args.size or FULL_SIZE[name]
            path = os.path.join(tmp, f"{name}.onnx")
            try:
                export_zoo_model(name, path, size)
                rows = explain_model(name, path, size)
            except Exception as exc:   # report and go on with the next model
                failures += 1
                print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
                continue
            for r in rows:
                cells = (r["model"], r["composite"], str(r["nodes"]), str(r["op_types"]), f"{r['compile_s']:.1f}",
                         f"{r['explain_s']:.2f}", " / ".join(f"{c:.3f}" for c in r["conservation"]))
                print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells), flush=True)
            os.remove(path)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
