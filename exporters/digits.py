"""scikit-learn's digits at MNIST size, and the two models trained on them (models/README.md).

The data: the 8x8 digits (0..16) scaled to [-1, 1], each pixel repeated 3x3 and padded by 2
pixels of -1 to 28x28, as the LRP tutorial's MNIST MLP takes its input. The split is a seeded
permutation: 1500 digits to train, the other 297 held out.

The models: the tutorial's 784-300-100-10 ReLU MLP (numpy minibatch SGD, float32) and a small
CNN (torch). Both are deterministic for a given seed on a given machine.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_TRAIN = 1500
OPSET = 17


def digits_28x28():
    """scikit-learn's digits as float32 (N, 784) in [-1, 1] and int labels (N,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("the digits need scikit-learn: pip install 'lrp_onnx[test]'") from None
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((3, 3))) * 2 - 1
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)), constant_values=-1)
    return images.reshape(len(images), -1).astype(np.float32), digits.target


def split(n: int, seed: int = 0):
    """(train indices, held-out indices): a seeded permutation of range(n), the first
    N_TRAIN to train."""
    order = np.random.default_rng(seed).permutation(n)
    return order[:N_TRAIN], order[N_TRAIN:]


def train_mlp(x, y, sizes=(784, 300, 100, 10), epochs=30, seed=0, decay=5e-4):
    """Minibatch (32) SGD with momentum 0.9, learning rate 0.05 and weight decay on softmax
    cross-entropy, He-initialised, float32; returns [(W (in, out), b), ...]."""
    rng = np.random.default_rng(seed)
    params = [(rng.normal(0, np.sqrt(2 / m), (m, n)).astype(np.float32), np.zeros(n, np.float32))
              for m, n in zip(sizes[:-1], sizes[1:])]
    velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(x)), max(1, len(x) // 32)):
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


def mlp_onnx(params, name: str = "digits_mlp"):
    """The MLP as ONNX: Gemm (named dense0, dense1, ...) + Relu per layer, none after the last;
    input "x" (N, 784) float32, output "logits" (N, classes)."""
    nodes, inits, current = [], [], "x"
    for i, (w, b) in enumerate(params):
        inits += [numpy_helper.from_array(np.ascontiguousarray(w.T, np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        out = "logits" if i == len(params) - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [out], name=f"dense{i}", transB=1))
        current = out
        if i < len(params) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"a{i + 1}"], name=f"relu{i + 1}"))
            current = f"a{i + 1}"
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", params[0][0].shape[0]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", params[-1][0].shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def digits_cnn(channels=(8, 16), classes: int = 10):
    """A small CNN for (N, 1, 28, 28) digits: two blocks of Conv 3x3 (pad 1) + ReLU +
    MaxPool 2, then Flatten and Linear (channels[1]*7*7 -> classes). Needs torch."""
    from torch import nn

    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, classes),
    )


def train_cnn(x, y, epochs=15, seed=0, channels=(8, 16)):
    """Train ``digits_cnn`` on x (N, 784) with Adam (lr 1e-3, batch 32, seeded shuffles) on
    cross-entropy; returns the module in eval mode. Runs on one CPU thread (restored after):
    the weights then do not depend on the machine's thread count (same torch build and CPU),
    and small convolutions train several times faster than on contended threads. Needs torch."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_cnn(torch, x, y, epochs, seed, channels)
    finally:
        torch.set_num_threads(threads)


def _train_cnn(torch, x, y, epochs, seed, channels):
    torch.manual_seed(seed)
    model = digits_cnn(channels)
    images = torch.from_numpy(np.asarray(x, np.float32).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(np.asarray(y, np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def onnx_accuracy(path_or_model, x, y) -> float:
    """The fraction of x that the ONNX model (one input) classifies as y, in onnxruntime."""
    import onnxruntime as ort

    source = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else os.fspath(path_or_model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else len(x) for d in session.get_inputs()[0].shape]
    logits = session.run(None, {session.get_inputs()[0].name: np.asarray(x, np.float32).reshape(shape)})[0]
    return float((logits.argmax(1) == y).mean())
