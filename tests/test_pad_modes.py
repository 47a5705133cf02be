"""ops/slicing.py's Pad in reflect, edge and wrap modes against a dense numpy formula.

Each padded output element copies one input element: y = P x with P the 0/1 matrix of
np.pad's copy (np.pad of the flat index, modes "reflect", "edge", "wrap"), so the relevance is
the adjoint, R_x = P^T R_y (each copy's relevance added back onto the element it copies), and
it is conserved: sum R_x = sum R_y. The gradient composite gives the same map (P^T G). R_y =
y * mask with a random mask. Tolerance: R_x is a sum of at most 4 float32 products y * mask
(an element copied into a corner of a 2-D reflection): 4 roundings of 2^-24 relative to the
largest term, 1e-6 of max|R_y| (tests/tolerances.py's a-priori kind); P built from the "symmetric"
mode (which repeats the border element) is rejected by it.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx.errors import ModelError

from handler_models import LRP0_ALL, make_model

RNG = np.random.default_rng(21)
SAMPLE = (2, 3, 4)
PADS = [(0, 0), (1, 2), (2, 1)]   # per non-batch axis of the sample: (before, after)


def copy_matrix(mode):
    """P (out x in) of one sample: row j has its 1 at the input element output j copies."""
    size = int(np.prod(SAMPLE))
    copied = np.pad(np.arange(size).reshape(SAMPLE), PADS, mode=mode).ravel()
    p = np.zeros((copied.size, size))
    p[np.arange(copied.size), copied] = 1.0
    return p, tuple(n + a + b for n, (a, b) in zip(SAMPLE, PADS))


def pad_model(mode, opset, with_axes):
    if with_axes:   # opset 18+: pads of the listed axes only
        params = {"pads": np.array([1, 2, 2, 1], np.int64), "axes": np.array([2, -1], np.int64)}
        inputs = ["x", "pads", "", "axes"]
    else:
        params = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
        inputs = ["x", "pads"]
    out_shape = copy_matrix(mode)[1]
    return make_model([helper.make_node("Pad", inputs, ["y"], name="pad", mode=mode)], SAMPLE, out_shape, params,
                      opset=opset)


CASES = {"reflect": (17, False), "edge": (18, True), "wrap": (19, True)}


@pytest.mark.parametrize("mode", list(CASES))
@pytest.mark.parametrize("composite", ["lrp0", "gradient"])
def test_relevance_is_the_adjoint_of_the_copy(mode, composite):
    opset, with_axes = CASES[mode]
    p, out_shape = copy_matrix(mode)
    x = RNG.normal(size=(2,) + SAMPLE).astype(np.float32)
    mask = RNG.normal(size=(2,) + out_shape).astype(np.float32)
    res = lrp_onnx.Explainer(pad_model(mode, opset, with_axes), LRP0_ALL if composite == "lrp0" else "gradient") \
        .explain(x, target=mask)
    y = x.reshape(2, -1).astype(np.float64) @ p.T
    np.testing.assert_array_equal(res.output.reshape(2, -1), y)
    r_y = y * mask.reshape(2, -1) if composite == "lrp0" else mask.reshape(2, -1).astype(np.float64)
    want = (r_y @ p).reshape(x.shape)
    tol = 1e-6 * np.abs(r_y).max()
    assert np.abs(res.relevance - want).max() <= tol
    np.testing.assert_allclose(res.relevance.reshape(2, -1).sum(1), r_y.sum(1), rtol=0, atol=r_y.size * tol)
    if mode == "reflect":   # the border element repeated (numpy's "symmetric") is another copy
        size = int(np.prod(SAMPLE))
        wrong = np.zeros_like(p)
        wrong[np.arange(p.shape[0]), np.pad(np.arange(size).reshape(SAMPLE), PADS, mode="symmetric").ravel()] = 1.0
        assert np.abs(res.relevance - (r_y @ wrong).reshape(x.shape)).max() > tol


def test_reflect_padding_of_the_batch_axis_is_an_error():
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="mirror", mode="reflect")
    model = make_model([node], (4,), (4,), {"pads": np.array([1, 0, 1, 0], np.int64)})
    with pytest.raises(ModelError, match=r"Pad 'mirror' pads the batch axis in reflect mode"):
        lrp_onnx.Explainer(model, LRP0_ALL)
