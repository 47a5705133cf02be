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
DOC = {
    "mlp": "784-300-100-10 ReLU MLP (the LRP tutorial's). Input 'x': float32 (N, 784), a 28x28 "
           "digit row-major, values in [-1, 1] (-1 background). Output 'logits' (N, 10).",
    "cnn": "Conv3x3(8)-ReLU-MaxPool2-Conv3x3(16)-ReLU-MaxPool2-Linear(784, 10). Input 'input': "
           "float32 (N, 1, 28, 28) NCHW, values in [-1, 1] (-1 background). Output 'logits' (N, 10).",
}


def build_mlp(x, y, train, epochs=30, seed=0):
    """The trained MLP as an onnx.ModelProto with its description in doc_string."""
    model = mlp_onnx(train_mlp(x[train], y[train], epochs=epochs, seed=seed))
    model.doc_string = DOC["mlp"]
    return model


def write_cnn(path, x, y, train, epochs=15, seed=0):
    """Train the CNN and export it (checked against torch by export_module) to ``path``."""
    import torch

    from exporters.pytorch import export_module

    module = train_cnn(x[train], y[train], epochs=epochs, seed=seed)

    def write(tmp):
        export_module(module, torch.from_numpy(x[:2].reshape(-1, 1, 28, 28)), tmp)
        model = onnx.load(tmp)
        model.doc_string = DOC["cnn"]
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
