"""Timing of AttnLRP / CP-LRP on transformers, CPU: lrp_onnx against LXT 2.1 in the same run.

Models (seeded random weights): torchvision ViT-B/16 at 224x224 (batches 1 and 8; CP-LRP with
zennit's Gamma, LXT's ViT recipe) and a BERT-base-sized encoder (BertForSequenceClassification
with BERT-base's default config, 128 tokens, AttnLRP). For each, LXT's oracle process
(tests/oracles/lxt_oracle.py in .venv-lxt) exports the model and times LXT's relevance of the
batch and torch's forward; then this process times onnxruntime's forward of the export (the
unit of "x forward") and ``Explainer.explain``, medians of ``--repeats`` runs after a warm-up,
and the compile (prepare + compile + session) once. Both sides get ``--threads`` threads.

    python benchmarks/transformers.py                 # both models (a few minutes on 2 cores)
    python benchmarks/transformers.py --models bert --repeats 3 --json out.json

Needs .venv-lxt (``bash tests/oracles/make_lxt_venv.sh``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
LXT_PYTHON = os.path.join(ROOT, ".venv-lxt", "bin", "python")
ORACLE = os.path.join(ROOT, "tests", "oracles", "lxt_oracle.py")

#: name: (oracle model, LXT map, lrp_onnx composite, batches, tokens)
CASES = {"vit_b_16": ("vit", "cp_lrp", "vit_gamma", (1, 8), None),
         "bert_base": ("bert", "attnlrp", "attnlrp", (1,), 128)}


def median_time(run, repeats: int) -> float:
    run()   # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def lxt(model: str, method: str, batch: int, tokens, repeats: int, threads: int, folder: str) -> dict:
    """Export the model and time LXT (oracle subprocess): {onnx, inputs, target, lxt_s, torch_forward_s}."""
    out = os.path.join(folder, f"{model}_{batch}")
    command = [LXT_PYTHON, ORACLE, model, method, out, "--size", "base", "--batch", str(batch),
               "--time", str(repeats), "--threads", str(threads)] + (["--tokens", str(tokens)] if tokens else [])
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(out + ".json") as fh:
        times = json.load(fh)
    with np.load(out + ".npz") as data:
        inputs = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
        target = data["target"]
    return {"onnx": out + ".onnx", "inputs": inputs, "target": target, **times}


def lrp_onnx_times(path: str, composite: str, inputs: dict, target, repeats: int, threads: int) -> dict:
    import onnxruntime as ort

    import lrp_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    forward = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    explainer = lrp_onnx.Explainer(path, composite=composite, providers=["CPUExecutionProvider"])
    compile_s = time.perf_counter() - start
    x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    return {"compile_s": compile_s,
            "ort_forward_s": median_time(lambda: forward.run(None, inputs), repeats),
            "explain_s": median_time(lambda: explainer.explain(x, target=target), repeats)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=sorted(CASES, reverse=True))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not os.path.exists(LXT_PYTHON):
        sys.exit(f"{LXT_PYTHON} is missing: bash tests/oracles/make_lxt_venv.sh")
    rows = []
    columns = ("model", "batch", "ort forward s", "lrp_onnx explain s", "x forward", "LXT s", "LXT / lrp_onnx",
               "torch forward s", "compile s")
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            model, method, composite, batches, tokens = CASES[name]
            for batch in batches:
                measured = lxt(model, method, batch, tokens, args.repeats, args.threads, folder)
                ours = lrp_onnx_times(measured["onnx"], composite, measured["inputs"], measured["target"],
                                      args.repeats, args.threads)
                row = {"model": name, "batch": batch, "tokens": tokens, "composite": composite, "lxt_map": method,
                       "lxt_s": measured["lxt_s"], "torch_forward_s": measured["torch_forward_s"], **ours}
                rows.append(row)
                cells = (name, batch, f"{ours['ort_forward_s']:.3f}", f"{ours['explain_s']:.3f}",
                         f"{ours['explain_s'] / ours['ort_forward_s']:.2f}", f"{row['lxt_s']:.3f}",
                         f"{row['lxt_s'] / ours['explain_s']:.2f}", f"{row['torch_forward_s']:.3f}",
                         f"{ours['compile_s']:.2f}")
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
