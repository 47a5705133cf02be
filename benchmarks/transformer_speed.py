"""Timing of AttnLRP / CP-LRP on transformers, CPU: lrp_onnx against LXT 2.1 in the same run.

Models (seeded random weights): torchvision ViT-B/16 at 224x224 (batches 1 and 8) with two
composites, ``attnlrp`` (against LXT's CP-LRP map with zennit's Epsilon, the nearest LXT has for
the torchvision ViT) and ``vit_gamma`` (LXT's ViT recipe: CP-LRP with zennit's Gamma), and a
BERT-base-sized encoder (BertForSequenceClassification with BERT-base's default config, 128
tokens, AttnLRP). For each model and batch, LXT's oracle process (tests/oracles/lxt_oracle.py in
.venv-lxt) exports the model and times LXT's relevance of the batch and torch's forward, once per
LXT map; then this process times onnxruntime's forward of the export (the unit of "x forward")
and ``Explainer.explain`` of each composite, the two interleaved run by run so that the ratio is
taken side by side under the same load: medians of ``--repeats`` runs after a warm-up (LXT's:
``--lxt-repeats``). The compile (prepare + compile + session) is timed once per composite.
onnxruntime runs with its default threads (one per core), LXT and torch with ``--threads``
(default: every core).

    python benchmarks/transformer_speed.py                 # both models (tens of minutes on 2 cores)
    python benchmarks/transformer_speed.py --models vit_b_16 --batches 1 --repeats 3 --json out.json

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

#: name: (oracle model, tokens, batches, ((lrp_onnx composite, LXT map, LXT oracle flags), ...))
CASES = {"vit_b_16": ("vit", None, (1, 8), (("attnlrp", "cp_lrp", ("--epsilon",)), ("vit_gamma", "cp_lrp", ()))),
         "bert_base": ("bert", 128, (1,), (("attnlrp", "attnlrp", ()),))}


def lxt(model: str, method: str, flags, batch: int, tokens, repeats: int, threads: int, out: str) -> dict:
    """Export the model and time LXT (oracle subprocess): {onnx, inputs, target, lxt_s, torch_forward_s}."""
    command = [LXT_PYTHON, ORACLE, model, method, out, "--size", "base", "--batch", str(batch),
               "--time", str(repeats), "--threads", str(threads), *flags] + (["--tokens", str(tokens)] if tokens else [])
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(out + ".json") as fh:
        times = json.load(fh)
    with np.load(out + ".npz") as data:
        inputs = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
        target = data["target"]
    return {"onnx": out + ".onnx", "inputs": inputs, "target": target, **times}


def lrp_onnx_times(path: str, composites, inputs: dict, target, repeats: int) -> dict:
    """{composite: {"ort_forward_s", "explain_s", "x_forward", "compile_s"}}: per composite, its
    explainer and onnxruntime's forward run in turn, ``repeats`` times after a warm-up; medians,
    and the median of the per-round ratios explain / forward. One explainer at a time: ViT-B/16's
    at batch 8 holds several GB of activations."""
    import onnxruntime as ort

    import lrp_onnx

    forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"])   # as the Explainer's: default threads
    x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    result = {}
    for composite in composites:
        start = time.perf_counter()
        explainer = lrp_onnx.Explainer(path, composite=composite, providers=["CPUExecutionProvider"])
        compile_s = time.perf_counter() - start
        runs = {"forward": lambda: forward.run(None, inputs), "explain": lambda: explainer.explain(x, target=target)}
        samples = {name: [] for name in runs}
        for run in runs.values():   # warm-up
            run()
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
        ratios = [e / f for e, f in zip(samples["explain"], samples["forward"])]
        result[composite] = {"ort_forward_s": statistics.median(samples["forward"]),
                             "explain_s": statistics.median(samples["explain"]), "x_forward": statistics.median(ratios),
                             "compile_s": compile_s}
        del explainer, runs
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=sorted(CASES, reverse=True))
    parser.add_argument("--batches", nargs="+", type=int, help="only these batch sizes (default: each model's own)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lxt-repeats", type=int, help="LXT's and torch's repeats (default: --repeats)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="LXT's and torch's threads")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not os.path.exists(LXT_PYTHON):
        sys.exit(f"{LXT_PYTHON} is missing: bash tests/oracles/make_lxt_venv.sh")
    rows = []
    columns = ("model", "batch", "composite", "LXT map", "ort forward s", "lrp_onnx explain s", "x forward", "LXT s",
               "LXT / lrp_onnx", "torch forward s", "compile s")
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            model, tokens, batches, pairs = CASES[name]
            for batch in [b for b in batches if args.batches is None or b in args.batches]:
                measured = [lxt(model, method, flags, batch, tokens, args.lxt_repeats or args.repeats, args.threads,
                                os.path.join(folder, f"{name}_{batch}_{i}")) for i, (_, method, flags) in enumerate(pairs)]
                if any(not np.array_equal(m["target"], measured[0]["target"]) for m in measured):
                    sys.exit(f"{name}: the LXT runs explain different targets; the oracle's model is not reproducible")
                ours = lrp_onnx_times(measured[0]["onnx"], [c for c, _, _ in pairs], measured[0]["inputs"],
                                      measured[0]["target"], args.repeats)
                for (composite, method, flags), lxt_times in zip(pairs, measured):
                    mine = ours[composite]
                    lxt_map = method + "".join(f" {f}" for f in flags)
                    row = {"model": name, "batch": batch, "tokens": tokens, "composite": composite, "lxt_map": lxt_map,
                           "lxt_s": lxt_times["lxt_s"], "torch_forward_s": lxt_times["torch_forward_s"], **mine}
                    rows.append(row)
                    cells = (name, batch, composite, lxt_map, f"{row['ort_forward_s']:.3f}", f"{mine['explain_s']:.3f}",
                             f"{mine['x_forward']:.2f}", f"{row['lxt_s']:.3f}", f"{row['lxt_s'] / mine['explain_s']:.2f}",
                             f"{row['torch_forward_s']:.3f}", f"{mine['compile_s']:.1f}")
                    print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
