"""lrp_onnx/ops/slicing.py (Split, Slice, Pad) against numpy indexing written here.

Each output element of these ops is one input element (or a pad constant), so the oracle is
exact bookkeeping: R_x = zeros, then R_x[selection] = R_out (numpy basic slicing with the same
bounds; an unused Split output and the pad border give / keep zero). The relevance entering the
op is y * mask with a random mask (both signs), so values and positions are checked at once.

Tolerance: the engine moves float32 values without arithmetic, except where a sum follows
(stated there): rtol 1e-6 against the float64 oracle of the float32 data, atol 0 (y * mask
is one float32 product: <= 2^-24 = 6e-8 relative; an a-priori bound, tests/tolerances.py).
A selection off by one element fails it (test_the_tolerance_rejects_an_off_by_one_slice).
"""
from __future__ import annotations


import numpy as np
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx.errors import ModelError
from lrp_onnx.ops.arithmetic import SUM_EPSILON

from handler_models import BIG, LRP0_ALL, make_model  # noqa: E402


def explain(model, x, mask, layers=()):
    return lrp_onnx.Explainer(model, LRP0_ALL).explain(x, target=mask.astype(np.float32), layers=layers)


def exact(actual, reference, what=""):
    np.testing.assert_allclose(np.asarray(actual, np.float64), reference, rtol=1e-6, atol=0, err_msg=what)


# --------------------------------------------------------------------------- Split


def test_split_with_sizes_and_an_unused_output():
    """x (N,6,3) -> Split(axis 1, [2, 3, 1]) -> o1, o2 (unused), o3 -> y = Concat(o3, o1):
    R_x[:, 0:2] = R_y[:, 1:3], R_x[:, 2:5] = 0, R_x[:, 5] = R_y[:, 0]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Split", ["x", "sizes"], ["o1", "o2", "o3"], name="split", axis=1),
             helper.make_node("Concat", ["o3", "o1"], ["y"], name="cat", axis=1)]
    model = make_model(nodes, (6, 3), (3, 3), {"sizes": np.array([2, 3, 1], np.int64)})
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    mask = rng.normal(size=(2, 3, 3))
    res = explain(model, x, mask, layers=("o1", "o3"))
    r_y = np.concatenate([x[:, 5:6], x[:, 0:2]], axis=1).astype(np.float64) * mask
    expected = np.zeros(x.shape)
    expected[:, 0:2], expected[:, 5:6] = r_y[:, 1:3], r_y[:, 0:1]
    exact(res.layers["o1"], r_y[:, 1:3], "R_o1")
    exact(res.layers["o3"], r_y[:, 0:1], "R_o3")
    exact(res.relevance, expected, "R_x")
    assert np.all(res.relevance[:, 2:5] == 0)


@pytest.mark.parametrize("opset", [17, 18])
def test_split_equal_parts_on_a_negative_axis(opset):
    """x (N,2,4) -> Split(axis -1) into two (N,2,2) parts (opset 18: num_outputs=2) -> y = p0 - p1:
    R_p0 = p0 / stab(y) R, R_p1 = -p1 / stab(y) R (ops.arithmetic), put back side by side.
    p0 is +-U(1, 2) and p1 +-U(0.2, 0.5), so |y| >= 0.5 (tolerance rtol 1e-5 for the division)."""
    rng = np.random.default_rng(1)
    n = 3
    x = np.empty((n, 2, 4), np.float32)
    x[..., :2] = rng.choice([-1, 1], size=(n, 2, 2)) * rng.uniform(1, 2, size=(n, 2, 2))
    x[..., 2:] = rng.choice([-1, 1], size=(n, 2, 2)) * rng.uniform(0.2, 0.5, size=(n, 2, 2))
    attrs = {"axis": -1, **({"num_outputs": 2} if opset >= 18 else {})}
    nodes = [helper.make_node("Split", ["x"], ["p0", "p1"], name="split", **attrs),
             helper.make_node("Sub", ["p0", "p1"], ["y"], name="sub")]
    model = make_model(nodes, (2, 4), (2, 2), {}, opset=opset)
    mask = rng.normal(size=(n, 2, 2))
    res = explain(model, x, mask)
    p0, p1 = x[..., :2].astype(np.float64), x[..., 2:].astype(np.float64)
    y = p0 - p1
    s = y * mask / (y + SUM_EPSILON * np.sign(y))
    np.testing.assert_allclose(res.relevance, np.concatenate([p0 * s, -p1 * s], axis=-1), rtol=1e-5)


def test_split_along_axis_0_of_a_packed_tensor():
    """timm's qkv.unbind(0): axis 0 of a (3, N, ...) tensor is not the batch axis. x (N,3,2) ->
    Transpose (3,N,2) -> Split(axis 0) -> a, b (unused), c -> y = Squeeze(a + c): R_x[:, 0] =
    a / stab(y) R, R_x[:, 2] = c / stab(y) R, R_x[:, 1] = 0 (a is +-U(1, 2), c +-U(0.2, 0.5):
    |y| >= 0.5, rtol 1e-5 for the division as above)."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="pack", perm=[1, 0, 2]),
             helper.make_node("Split", ["t"], ["a", "b", "c"], name="unbind", axis=0),
             helper.make_node("Add", ["a", "c"], ["s"], name="add"),
             helper.make_node("Squeeze", ["s", "zero"], ["y"], name="squeeze")]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 2)).astype(np.float32)
    x[:, 0] = rng.choice([-1, 1], size=(2, 2)) * rng.uniform(1, 2, size=(2, 2))
    x[:, 2] = rng.choice([-1, 1], size=(2, 2)) * rng.uniform(0.2, 0.5, size=(2, 2))
    mask = rng.normal(size=(2, 2))
    res = explain(make_model(nodes, (3, 2), (2,), {"zero": np.array([0], np.int64)}), x, mask)
    a, c = x[:, 0].astype(np.float64), x[:, 2].astype(np.float64)
    y = a + c
    share = y * mask / (y + SUM_EPSILON * np.sign(y))
    expected = np.zeros(x.shape)
    expected[:, 0], expected[:, 2] = a * share, c * share
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-5)


# --------------------------------------------------------------------------- Slice

#: (starts, ends, axes, steps or None, the same selection as numpy slices of one sample)
SLICES = [
    ([-3, 1], [BIG, -1], [2, 3], [1, 2], (slice(None), slice(-3, None), slice(1, -1, 2))),
    ([1, 0, -1], [4, 100, -7], [1, 2, -1], [2, 3, -1], (slice(1, 4, 2), slice(0, 100, 3), slice(-1, -7, -1))),
    ([0], [2], [1], None, (slice(0, 2),)),
    ([1], [-1], [-2], None, (slice(None), slice(1, -1))),
    ([-100, 5], [100, -100], [3, 2], [2, -2], (slice(None), slice(5, -100, -2), slice(-100, 100, 2))),
]


@pytest.mark.parametrize("starts,ends,axes,steps,selection", SLICES)
def test_slice_scatters_relevance_back(starts, ends, axes, steps, selection):
    """x (N,4,6,5) -> Slice -> y: R_x[:, sel] = y * mask, zero elsewhere (negative and clamped
    bounds, steps 2, 3 and negative steps, several axes, axes in any order)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    y = x[(slice(None),) + selection]
    params = {"starts": np.array(starts, np.int64), "ends": np.array(ends, np.int64), "axes": np.array(axes, np.int64)}
    inputs = ["x", "starts", "ends", "axes"]
    if steps is not None:
        params["steps"] = np.array(steps, np.int64)
        inputs.append("steps")
    model = make_model([helper.make_node("Slice", inputs, ["y"], name="slice")], (4, 6, 5), y.shape[1:], params)
    mask = rng.normal(size=y.shape)
    res = explain(model, x, mask)
    expected = np.zeros(x.shape)
    expected[(slice(None),) + selection] = y.astype(np.float64) * mask
    exact(res.output, y)
    exact(res.relevance, expected)


def test_the_tolerance_rejects_an_off_by_one_slice():
    """x[:, 0:2] explained; the oracle of x[:, 1:3] (one element off) fails ``exact``."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    params = {"starts": np.array([0], np.int64), "ends": np.array([2], np.int64), "axes": np.array([1], np.int64)}
    model = make_model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice")],
                       (4, 6, 5), (2, 6, 5), params)
    mask = rng.normal(size=(2, 2, 6, 5))
    res = explain(model, x, mask)
    for selection, agrees in ((slice(0, 2), True), (slice(1, 3), False)):
        expected = np.zeros(x.shape)
        expected[:, selection] = x[:, selection].astype(np.float64) * mask
        try:
            exact(res.relevance, expected)
            passed = True
        except AssertionError:
            passed = False
        assert passed == agrees, selection


@pytest.mark.parametrize("axes", [[0], [0, 2], None])
def test_slice_of_the_batch_axis_is_an_error(axes):
    """Axes containing 0, or no axes input (ONNX: axes 0, 1, ... so the batch axis is sliced)."""
    k = 1 if axes is None else len(axes)
    params = {"starts": np.zeros(k, np.int64), "ends": np.full(k, 1, np.int64)}
    inputs = ["x", "starts", "ends"]
    if axes is not None:
        params["axes"] = np.array(axes, np.int64)
        inputs.append("axes")
    node = helper.make_node("Slice", inputs, ["y"], name="batch_slice")
    with pytest.raises(ModelError, match=r"Slice 'batch_slice' slices the batch axis"):
        lrp_onnx.Explainer(make_model([node], (3, 4), (3, 1) if axes == [0, 2] else (3, 4), params), LRP0_ALL)


# --------------------------------------------------------------------------- Pad


@pytest.mark.parametrize("opset", [17, 18])
def test_constant_pad_cuts_the_border_off(opset):
    """x (N,2,3,4) -> Pad(constant 0.5) -> y: R_x = R_y without the border; the border's
    relevance (0.5 * mask) stays with the pad constant. Opset 17: pads on all axes
    [0,0,1,2, 0,0,3,0]; opset 18: the same through axes [2, -1] and pads [1,2, 3,0]."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 2, 3, 4)).astype(np.float32)
    if opset == 17:
        params = {"pads": np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64)}
        inputs = ["x", "pads", "value"]
    else:
        params = {"pads": np.array([1, 2, 3, 0], np.int64), "axes": np.array([2, -1], np.int64)}
        inputs = ["x", "pads", "value", "axes"]
    params["value"] = np.array(0.5, np.float32)
    model = make_model([helper.make_node("Pad", inputs, ["y"], name="pad", mode="constant")], (2, 3, 4), (2, 7, 6),
                       params, opset=opset)
    mask = rng.normal(size=(2, 2, 7, 6))
    y = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (1, 3), (2, 0)], constant_values=0.5)
    res = explain(model, x, mask)
    exact(res.output, y)
    exact(res.relevance, (y * mask)[:, :, 1:4, 2:6])


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_computed_pads_are_an_error(mode):
    """(reflect, edge and wrap modes: tests/test_pad_modes.py)"""
    nodes = [helper.make_node("Shape", ["x"], ["dims"], name="dims"),
             helper.make_node("Concat", ["dims", "dims"], ["pads"], name="pads", axis=0),
             helper.make_node("Pad", ["x", "pads"], ["y"], name="mirror", mode=mode)]
    model = make_model(nodes, (2, 4), (2, 6), {})
    with pytest.raises(ModelError, match=rf"Pad 'mirror' \({mode} mode, computed pads\)"):
        lrp_onnx.Explainer(model, LRP0_ALL)


def test_negative_pad_is_an_error():
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="crop", mode="constant")
    model = make_model([node], (2, 4), (2, 3), {"pads": np.array([0, 0, -1, 0, 0, 0], np.int64)})
    with pytest.raises(ModelError, match=r"Pad 'crop' has negative pads"):
        lrp_onnx.Explainer(model, LRP0_ALL)
