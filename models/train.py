"""Train the shipped digits models and write them as ONNX: ``python -m models.train``.

Deterministic (seeded data split, initialisation and shuffles); prints each model's held-out
accuracy. The data and training code are in ``exporters.digits``.
"""
from __future__ import annotations

import argparse
import os
import sys

import onnx

from exporters.digits import digits_28x28, mlp_onnx, onnx_accuracy, split, train_cnn, train_mlp
from lrp_onnx.files import write_atomically

HERE = os.path.dirname(os.path.abspath(__file__))
INPUT = "values in [-1, 1] (-1 background), scikit-learn digits at 28x28. Output 'logits' (N, 10)."


def mlp_doc(sizes) -> str:
    return (f"{'-'.join(map(str, sizes))} ReLU MLP. Input 'x': float32 "
            f"(N, {sizes[0]}), a 28x28 digit row-major, {INPUT}")


def cnn_doc(channels) -> str:
    c1, c2 = channels
    return (f"Conv3x3({c1})-ReLU-MaxPool2-Conv3x3({c2})-ReLU-MaxPool2-Linear({c2 * 49}, 10). Input 'input': "
            f"float32 (N, 1, 28, 28) NCHW, {INPUT}")


def build_mlp(x, y, train, sizes=(784, 300, 100, 10), epochs=30, seed=0):
    """The trained MLP as an onnx.ModelProto, its input format in doc_string."""
    model = mlp_onnx(train_mlp(x[train], y[train], sizes=sizes, epochs=epochs, seed=seed))
    model.doc_string = mlp_doc(sizes)
    return model


def write_cnn(path, x, y, train, channels=(8, 16), epochs=15, seed=0):
    """Train the CNN and export it (checked against torch by export_module) to ``path``."""
    import torch

    from exporters.pytorch import export_module

    module = train_cnn(x[train], y[train], epochs=epochs, seed=seed, channels=channels)

    def write(tmp):
        export_module(module, torch.from_numpy(x[:2].reshape(-1, 1, 28, 28)), tmp)
        model = onnx.load(tmp)
        model.doc_string = cnn_doc(channels)
        onnx.save(model, tmp)

    write_atomically(path, write)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="output folder (default: models/)")
    parser.add_argument("--only", choices=("mlp", "cnn"), help="train one model only")
    args = parser.parse_args(argv)
    x, y = digits_28x28()
    train, test = split(len(x))
    os.makedirs(args.out, exist_ok=True)
    if args.only in (None, "mlp"):
        path = os.path.join(args.out, "digits_mlp.onnx")
        model = build_mlp(x, y, train)
        write_atomically(path, lambda tmp: onnx.save(model, tmp))
        print(f"wrote {path}: held-out accuracy {onnx_accuracy(path, x[test], y[test]):.2%} ({len(test)} digits)")
    if args.only in (None, "cnn"):
        path = os.path.join(args.out, "digits_cnn.onnx")
        write_cnn(path, x, y, train)
        print(f"wrote {path}: held-out accuracy {onnx_accuracy(path, x[test], y[test]):.2%} ({len(test)} digits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
