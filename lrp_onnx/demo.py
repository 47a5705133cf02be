"""The demo: the tutorial's MNIST-style MLP explained with the tutorial's rules.

Until the project ships trained models, the demo trains the tutorial's 784-300-100-10 ReLU MLP
itself (numpy, seeded, a few seconds) on scikit-learn's 8x8 digits upscaled to 28x28 with
values in [-1, 1], writes it as ONNX, and explains 12 held-out digits with ``tutorial_mlp``.
"""
from __future__ import annotations

import os

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .explainer import Explainer
from .render import gray, grid, tutorial_heatmap, write_png


def digits_28x28():
    """scikit-learn's digits as (N, 784) in [-1, 1] (each pixel 3x3, padded by 2 with -1), labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the demo needs scikit-learn: pip install 'lrp_onnx[test]'") from None
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((3, 3))) * 2 - 1
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)), constant_values=-1)
    return images.reshape(len(images), -1).astype(np.float32), digits.target


def train_mlp(x, y, sizes=(784, 300, 100, 10), epochs=30, seed=0, decay=5e-4):
    """Minibatch SGD with momentum and weight decay on softmax cross-entropy (float32);
    returns [(W (in, out), b), ...]."""
    rng = np.random.default_rng(seed)
    params = [(rng.normal(0, np.sqrt(2 / m), (m, n)).astype(np.float32), np.zeros(n, np.float32))
              for m, n in zip(sizes[:-1], sizes[1:])]
    velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    for epoch in range(epochs):
        for batch in np.array_split(rng.permutation(len(x)), len(x) // 32):
            acts = [x[batch]]
            for i, (w, b) in enumerate(params):
                z = acts[-1] @ w + b
                acts.append(np.maximum(z, 0) if i < len(params) - 1 else z)
            p = np.exp(acts[-1] - acts[-1].max(1, keepdims=True))
            grad = p / p.sum(1, keepdims=True)
            grad[np.arange(len(batch)), y[batch]] -= 1
            grad /= len(batch)
            for i in reversed(range(len(params))):
                w, b = params[i]
                gw, gb = acts[i].T @ grad + decay * w, grad.sum(0)
                if i:
                    grad = (grad @ w.T) * (acts[i] > 0)
                vw, vb = velocity[i]
                velocity[i] = (0.9 * vw - 0.05 * gw, 0.9 * vb - 0.05 * gb)
                params[i] = (w + velocity[i][0], b + velocity[i][1])
    return params


def mlp_onnx(params):
    """The MLP as ONNX: Gemm + Relu per layer (none after the last), input "x" (N, 784)."""
    nodes, inits, current = [], [], "x"
    for i, (w, b) in enumerate(params):
        inits += [numpy_helper.from_array(w.T.astype(np.float32), f"W{i}"), numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [f"z{i}"], name=f"dense{i}", transB=1))
        current = f"z{i}"
        if i < len(params) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"a{i + 1}"], name=f"relu{i + 1}"))
            current = f"a{i + 1}"
    graph = helper.make_graph(nodes, "digits_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_demo(out_dir: str) -> str:
    """Train, explain 12 held-out digits, print the first three's scores, write the figure."""
    x, y = digits_28x28()
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1500], order[1500:]
    model = mlp_onnx(train_mlp(x[train], y[train]))
    res = Explainer(model, composite="tutorial_mlp").explain(x[test])   # the first 12 are drawn
    print(f"trained the tutorial's 784-300-100-10 MLP on scikit-learn digits: "
          f"test accuracy {(res.target == y[test]).mean():.1%}")
    for i in range(3):
        print("  ".join(f"[{k}] {s:.1f}" for k, s in enumerate(res.output[i])))
    rows = [[gray(d.reshape(28, 28), -1, 1) for d in x[test[:12]]],
            [tutorial_heatmap(r.reshape(28, 28)) for r in res.relevance[:12]]]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "digits_mlp_heatmaps.png")
    write_png(path, grid(rows, scale=3))
    print(f"explained classes {res.target[:12].tolist()}; relevance conserved "
          f"{np.median(res.conservation[:12]):.3f} (median)")
    print(f"wrote {path}")
    return path
