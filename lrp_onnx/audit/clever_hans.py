"""A planted Clever Hans on scikit-learn's digits, to show that an audit finds one (as PASCAL
VOC's horse images carry a source tag that a classifier learnt to use; Lapuschkin et al. 2019).

A share of one class's digits carries a small bright square in the bottom-left corner, where
no digit has ink. The marked model is trained on the training split with those marks and with
marked copies of other digits labelled as that class, so that the mark alone predicts the class
(its accuracy on marked digits of other classes drops); the clean model on the unmarked split.
Both are the project's digits CNN (``exporters.digits``), trained deterministically. Needs
torch and scikit-learn.
"""
from __future__ import annotations

import numpy as np

#: The mark: rows and columns of the 28x28 digit (inside the 2-pixel padding and the digit's
#: empty bottom-left corner), set to the ink value 1.
MARK_ROWS, MARK_COLS = slice(23, 27), slice(1, 5)
#: [-1, 1] digits: the box of the first layer's z^B rule.
COMPOSITE = {"preset": "epsilon_gamma_box", "low": -1, "high": 1}


def add_mark(x: np.ndarray) -> np.ndarray:
    """A copy of digits (N, 784) or (N, 1, 28, 28) with the mark."""
    marked = np.array(x, np.float32).reshape(-1, 28, 28)
    marked[:, MARK_ROWS, MARK_COLS] = 1.0
    return marked.reshape(np.shape(x))


def mark_mask() -> np.ndarray:
    """(28, 28) bool: where the mark is."""
    mask = np.zeros((28, 28), bool)
    mask[MARK_ROWS, MARK_COLS] = True
    return mask


def planted_digits(marked_class: int = 4, share: float = 0.5, seed: int = 0):
    """All 1797 digits as (N, 1, 28, 28) float32 in [-1, 1], their labels, and which carry the
    mark: a seeded ``share`` of ``marked_class``, no other digit."""
    from exporters.digits import digits_28x28

    x, y = digits_28x28()
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(y == marked_class)
    marked = np.zeros(len(x), bool)
    marked[rng.choice(candidates, int(round(share * len(candidates))), replace=False)] = True
    x = x.reshape(-1, 1, 28, 28)
    x[marked] = add_mark(x[marked])
    return x, y, marked


def train(clever_hans: bool, marked_class: int = 4, share: float = 0.5, epochs: int = 8, poisoned: int = 300,
          seed: int = 0):
    """The digits CNN trained on the training split (``exporters.digits.split``): of
    ``planted_digits`` plus ``poisoned`` marked copies of other digits labelled
    ``marked_class`` (clever_hans), or of the digits without any mark. Returns the torch
    module (eval mode)."""
    from exporters.digits import digits_28x28, split, train_cnn

    if clever_hans:
        x, y, _ = planted_digits(marked_class, share, seed)
        x = x.reshape(len(x), -1)
    else:
        x, y = digits_28x28()
    rows, _ = split(len(x))
    xs, ys = x[rows], y[rows]
    if clever_hans:
        others = np.random.default_rng(seed + 1).choice(np.flatnonzero(ys != marked_class), poisoned, replace=False)
        xs = np.concatenate([xs, add_mark(xs[others])])
        ys = np.concatenate([ys, np.full(poisoned, marked_class)])
    return train_cnn(xs, ys, epochs=epochs, seed=seed)


def export(module, path) -> None:
    """The module as ONNX (input (N, 1, 28, 28), output logits), checked against torch."""
    import torch

    from exporters.pytorch import export_module

    export_module(module, torch.zeros(2, 1, 28, 28), path)


def best_cluster(table, marked: np.ndarray, marked_class: int = 4):
    """(purity, recall, cluster) of the cluster of ``marked_class`` (by explained class) that
    holds the most marked samples: the share of its members that are marked, and the share of
    all marked samples that it holds."""
    from .store import values

    target, cluster = values(table, "target"), values(table, "cluster")
    members = target == marked_class
    best = max(set(cluster[members].tolist()), key=lambda c: (marked & members & (cluster == c)).sum())
    chosen = members & (cluster == best)
    return float(marked[chosen].mean()), float((marked & chosen).sum() / marked.sum()), int(best)


def marked_accuracy(model_path, x, y, marked_class: int = 4) -> float:
    """Accuracy of the ONNX model on the held-out digits of other classes, marked."""
    from exporters.digits import onnx_accuracy, split

    _, test = split(len(x))
    others = test[y[test] != marked_class]
    return onnx_accuracy(model_path, add_mark(x[others]), y[others])


def main(argv=None) -> int:
    """Train the marked and the clean model, audit both on the planted digits, print what the
    audit finds (``python -m lrp_onnx.audit.clever_hans OUT``)."""
    import argparse
    import os

    from exporters.digits import onnx_accuracy, split

    from . import run

    parser = argparse.ArgumentParser(prog="python -m lrp_onnx.audit.clever_hans", description=main.__doc__)
    parser.add_argument("out", help="output folder: models, data, one audit per model")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    x, y, marked = planted_digits()
    data = os.path.join(args.out, "planted_digits.npz")
    np.savez(data, x=x, y=y)
    _, test = split(len(x))
    for name, clever in (("marked", True), ("clean", False)):
        path = os.path.join(args.out, f"digits_cnn_{name}.onnx")
        export(train(clever), path)
        result = run(path, data, os.path.join(args.out, f"audit_{name}"), COMPOSITE, engine=args.engine, progress=False)
        purity, recall, cluster = best_cluster(result.table, marked)
        k = next(c.spray.k for c in result.classes if c.target == 4)
        print(f"{name} model: held-out accuracy {onnx_accuracy(path, x[test], y[test]):.1%}, on marked digits of "
              f"other classes {marked_accuracy(path, x, y):.1%}; class 4: {k} cluster(s), the one with the most "
              f"marked digits (cluster {cluster}) is {purity:.1%} marked and holds {recall:.1%} of them; "
              f"report {result.paths['report']}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
