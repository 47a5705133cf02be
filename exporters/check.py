"""Tolerances for float32 results that hold on any CPU: measured against a float64 run.

A float32 network of L layers is not reproducible to a fixed number of digits: each kernel
(AVX2 or AVX-512, one thread or several) sums in its own order, every sum rounds with a
relative error of up to 2^-24 times its terms' magnitudes, and the network amplifies these
errors layer after layer by a factor nobody can bound a priori (it depends on the weights:
on the zoo's calibrated random networks torch's float32 logits are off by 4e-6 (resnet18) to
1.1e-4 (inception_v3, 95 convs) of their scale, where sqrt(L) * 2^-24 would predict 6e-7).
So no constant fits every machine; what does is the error that float32 arithmetic makes on
*this* network and *this* input, measured:

    reference  t64 = the computation in float64 (error ~2^-53, negligible),
    envelope   e32 = max|t32 - t64|, the error of an independent float32 implementation of
                     the same function (torch's own float32 run, or the oracle in float32),
    check      max|got - t64| <= K * e32 + floor(scale, depth).

K = 4: two float32 implementations of one function make rounding errors of the same order
(same operations, same magnitudes, only the summation orders differ), so one that is more
than 4 times as far from the exact result as the other has a real error, not rounding.
floor = FLOOR_ULPS * 2^-24 * scale * sqrt(depth): the random-walk size of the roundoff of
``depth`` layers at the output's scale, for the case that e32 happens to be tiny (a shallow
model whose float32 result is exact by luck); FLOOR_ULPS = 8 covers the few roundings per
layer (product, sum, bias, activation). The check is not a tautology: e32 is measured on
another implementation than ``got``, so a wrong ``got`` (a dropped bias, a changed
epsilon) is as far from t64 as its error, whatever e32 is. (t32 and t64 must both be runs of
the function ``got`` is supposed to compute; an envelope K * |t32 - t64'| against another
function's t64' would contain the very difference under test.)
"""
from __future__ import annotations

import math

import numpy as np

#: Unit roundoff of float32 (round to nearest): every operation's relative error is <= EPS32.
EPS32 = 2.0 ** -24
#: How much farther from float64 than torch's (or the oracle's) own float32 run a float32
#: result may be (see the module docstring).
K = 4.0
#: Roundings per layer allowed for in the floor (see the module docstring).
FLOOR_ULPS = 8.0


def roundoff_floor(scale: float, depth: int) -> float:
    """FLOOR_ULPS * EPS32 * scale * sqrt(depth): the roundoff of ``depth`` layers at ``scale``."""
    return FLOOR_ULPS * EPS32 * float(scale) * math.sqrt(max(int(depth), 1))


def float32_tolerance(ref32, ref64, depth: int, scale: float = None) -> float:
    """K * max|ref32 - ref64| + roundoff_floor(scale, depth); ``scale`` defaults to max|ref64|."""
    ref64 = np.asarray(ref64, np.float64)
    scale = float(np.abs(ref64).max()) if scale is None else float(scale)
    measured = float(np.abs(np.asarray(ref32, np.float64) - ref64).max())
    return K * measured + roundoff_floor(scale, depth)


def envelope_ratio(got, ref32, ref64, depth: int, scale: float = None) -> float:
    """max|got - ref64| / float32_tolerance(ref32, ref64, depth, scale): <= 1 passes."""
    error = float(np.abs(np.asarray(got, np.float64) - np.asarray(ref64, np.float64)).max())
    return error / float32_tolerance(ref32, ref64, depth, scale)


def module_depth(module) -> int:
    """The number of parameterised layers (modules with a weight of their own): the depth the
    roundoff floor counts."""
    import torch

    return max(sum(1 for m in module.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)), 1)


def torch_float64(module, x):
    """``module`` run in float64 on ``x``: a deep copy of it (``.double()``) on ``x.double()``,
    as a numpy array; the module itself is left as it is."""
    import copy

    import torch

    with torch.no_grad():
        return copy.deepcopy(module).double()(x.double()).numpy()


def check_export(path, inputs: dict, framework: str, ref32, ref64, depth: int) -> None:
    """Run the exported file ``path`` in onnxruntime on ``inputs`` and require its first output
    within ``float32_tolerance(ref32, ref64, depth)`` of ``ref64`` (the framework's float64
    run; ``ref32`` its own float32 output); else remove the file and raise RuntimeError."""
    import os

    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)[0].astype(np.float64)
    ref64 = np.asarray(ref64, np.float64)
    scale = float(np.abs(ref64).max()) or 1.0
    error = float(np.abs(got - ref64).max())
    tolerance = float32_tolerance(ref32, ref64, depth, scale)
    if not error <= tolerance:
        os.remove(path)
        raise RuntimeError(f"onnxruntime differs from {framework} (float64) by {error:.3g} (scale {scale:.3g}), "
                           f"more than the float32 tolerance {tolerance:.3g} after export")
