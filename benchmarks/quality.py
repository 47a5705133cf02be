"""Explanation quality of the LRP Toolbox's pretrained LeNet-5 on MNIST test digits, measured by
pixel flipping (lrp_onnx.evaluate): LRP-0, LRP-epsilon, epsilon_plus_flat, alpha2-beta1,
epsilon_gamma_box, gradient, gradient x input and random heatmaps.

    .venv/bin/python benchmarks/quality.py [--n 500] [--patch 2] [--steps 32]
        [--replacement uniform|constant|blur] [--value -1] [--out quality_out]

Needs ../shared/data (LeNet-5.txt and the MNIST test set; see its README) and scipy to read the
.mat file. Writes curves.png, quality.md and quality.csv into --out and prints the table.
Digits are scaled to [-1, 1], shaped (28, 28, 1) and padded by 2 pixels of -1 to (32, 32, 1)
(NHWC), as the toolbox's LeNet-5 expects; each heatmap explains the true digit.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnx  # noqa: E402

from exporters.lrp_toolbox import read, to_onnx, toolbox_composite  # noqa: E402
from lrp_onnx import evaluate  # noqa: E402
from lrp_onnx.composites import Composite, Family  # noqa: E402
from lrp_onnx.rules import LRP0  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data")
LENET = os.path.join(SHARED, "lrp_toolbox", "LeNet-5.txt")
MNIST = os.path.join(SHARED, "mnist")


def mnist_test(n: int):
    """The first n MNIST test digits as the toolbox's LeNet-5 takes them, (n, 32, 32, 1) in
    [-1, 1] with a border of -1, and their labels."""
    from scipy.io import loadmat

    images = loadmat(os.path.join(MNIST, "test_images.mat"))["data"][:n].astype(np.float32)
    labels = np.load(os.path.join(MNIST, "test_labels.npy"), allow_pickle=True).reshape(-1)[:n].astype(np.int64)
    x = (images / 127.5 - 1.0).reshape(-1, 28, 28, 1)
    return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0).astype(np.float32), labels


def lenet_methods(layers):
    """{row label: method}: the rows of the README table."""
    return {
        "LRP-0": Composite(((Family("all"), LRP0()),), "winner", "lrp0"),
        "LRP-epsilon (eps=1)": toolbox_composite(layers, "epsilon", epsilon=1.0),
        "epsilon_plus_flat": "epsilon_plus_flat",
        "alpha2-beta1": toolbox_composite(layers, "alphabeta", alpha=2.0),
        "epsilon_gamma_box (box [-1, 1])": {"preset": "epsilon_gamma_box", "low": -1.0, "high": 1.0},
        "gradient": "gradient",
        "gradient x input": "gradient_x_input",
        "random": "random",
    }


def lenet_model(path: str):
    layers = read(LENET)
    onnx.save(to_onnx(layers, (32, 32, 1)), path)
    return layers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--replacement", default="uniform", choices=evaluate.REPLACEMENTS)
    ap.add_argument("--value", type=float, default=-1.0, help="the constant replacement (default -1: background)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="quality_out")
    args = ap.parse_args(argv)
    if not os.path.isfile(LENET):
        print(f"needs {os.path.normpath(SHARED)} (LeNet-5.txt and MNIST); not found", file=sys.stderr)
        return 2
    x, labels = mnist_test(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet5.onnx")
        layers = lenet_model(path)
        perturbation = evaluate.Perturbation(patch=args.patch, steps=args.steps, replacement=args.replacement,
                                             value=args.value, low=-1.0, high=1.0, seed=args.seed)
        results = evaluate.compare(path, x, lenet_methods(layers), target=labels, perturbation=perturbation, layout="NHWC")
    title = (f"LeNet-5 (LRP Toolbox), {args.n} MNIST test digits, {args.patch}x{args.patch} patches, "
             f"{args.replacement}" + (f" {args.value:g}" if args.replacement == "constant" else ""))
    evaluate.write_report(results, args.out, title)
    print(title)
    print(evaluate.table_markdown(results))
    print(f"wrote {args.out}/curves.png, quality.md, quality.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
