"""lrp_onnx/ops/resize.py: Resize (nearest and linear, as torch.nn.Upsample and interpolate
export them) against a dense numpy formula.

Model: x (N, 2, 3, 4) -> Resize -> Flatten -> Gemm, explained with LRP-0 and with the
``gradient`` composite. Oracle (float64): the per-axis interpolation matrices A (out x in)
written from ONNX's formulas (nearest: asymmetric coordinates, floor; linear: half_pixel or
align_corners, clamped at the border), the resize as the dense matrix M = I_C (x) A_h (x) A_w on a
flattened sample, and LRP-0 through both linear layers: R_f = f * w[t] (R_out = y), R_x =
x * ((R_f / (M x)) M); the gradient w[t] M. Tolerance: 1e-5 of max|R| (a Gemm of 48-96 terms, an
interpolation of at most 4, a division by |z| bounded away from 0 by positive inputs: a few
roundings of 2^-24 each). The oracle with the wrong coordinate mode (asymmetric instead of
half_pixel) is rejected by it; cubic resizing is refused with an error. Scales and sizes computed
at run time (from Shape, as torch's interpolate(size=y.shape[-2:]) writes them) and dynamic H and
W (one explainer, two image sizes) are checked against the same oracle.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from handler_models import make_model
from lrp_onnx import Composite, Explainer, Family
from lrp_onnx.errors import ModelError
from lrp_onnx.rules import LRP0

SHAPE, K = (2, 3, 4), 3
RNG = np.random.default_rng(6)


def axis_matrix(n_in, n_out, mode, transform):
    a = np.zeros((n_out, n_in))
    for dst in range(n_out):
        if transform == "align_corners":
            src = dst * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        elif transform == "half_pixel":
            src = (dst + 0.5) * n_in / n_out - 0.5
        else:   # asymmetric
            src = dst * n_in / n_out
        if mode == "nearest":
            a[dst, min(int(np.floor(src)), n_in - 1)] = 1.0
            continue
        src = min(max(src, 0.0), n_in - 1)
        low = int(np.floor(src))
        high, frac = min(low + 1, n_in - 1), src - low
        a[dst, low] += 1 - frac
        a[dst, high] += frac
    return a


CASES = {   # name: (attributes, output H, W, oracle's coordinate transform)
    "nearest_x2": (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 6, 8, "asymmetric"),
    "linear_half_pixel": (dict(mode="linear", coordinate_transformation_mode="half_pixel"), 6, 6, "half_pixel"),
    "linear_align_corners": (dict(mode="linear", coordinate_transformation_mode="align_corners"), 5, 7, "align_corners"),
}


def computed(what, params):
    """Nodes computing ``what`` ("scales" or "sizes") of the nearest_x2 / linear_half_pixel case from
    Shape(x) at run time: sizes = Concat(Shape(x)[0:2], [6, 6]); scales = Concat([1, 1], Shape(x)[2:4] / [1.5, 2])."""
    params.update(begin=np.array([0], np.int64), mid=np.array([2], np.int64), end=np.array([4], np.int64))
    nodes = [helper.make_node("Shape", ["x"], ["dims"])]
    if what == "sizes":
        params["hw"] = np.array([6, 6], np.int64)
        return nodes + [helper.make_node("Slice", ["dims", "begin", "mid"], ["nc"]),
                        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)]
    params.update(ones=np.ones(2, np.float32), div=np.array([1.5, 2.0], np.float32))
    return nodes + [helper.make_node("Slice", ["dims", "mid", "end"], ["hw"]),
                    helper.make_node("Cast", ["hw"], ["hw_f"], to=1), helper.make_node("Div", ["hw_f", "div"], ["hw_s"]),
                    helper.make_node("Concat", ["ones", "hw_s"], ["scales"], axis=0)]


def model(case, mode_override=None, at_run_time=False):
    attrs, out_h, out_w, _ = CASES[case]
    attrs = dict(attrs, **({"mode": mode_override} if mode_override else {}))
    params = {"roi": np.zeros(0), "w": RNG.normal(size=(K, SHAPE[0] * out_h * out_w))}
    if case == "nearest_x2":   # torch.nn.Upsample(scale_factor=2): constant scales, any batch size
        params["scales"] = np.array([1, 1, 2, 2], np.float32)
        inputs = ["x", "roi", "scales"]
    else:
        params["sizes"] = np.array([2, SHAPE[0], out_h, out_w], np.int64)
        inputs = ["x", "roi", "", "sizes"]
    shape_nodes = []
    if at_run_time:
        shape_nodes = computed(inputs[-1], params)
        del params[inputs[-1]]
    nodes = shape_nodes + [helper.make_node("Resize", inputs, ["r"], **attrs), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    return make_model(nodes, SHAPE, (K,), params), params["w"].astype(np.float32).astype(np.float64)


def oracle(case, x, w, target, gradient, transform=None):
    attrs, out_h, out_w, own = CASES[case]
    a_h, a_w = (axis_matrix(n, m, attrs["mode"], transform or own) for n, m in ((SHAPE[1], out_h), (SHAPE[2], out_w)))
    dense = np.kron(np.eye(SHAPE[0]), np.kron(a_h, a_w))
    flat = x.reshape(len(x), -1).astype(np.float64)
    if gradient:
        return (w[target] @ dense).reshape(x.shape)
    f = flat @ dense.T
    return (flat * ((f * w[target] / f) @ dense)).reshape(x.shape)


@pytest.mark.parametrize("case, at_run_time", [(case, False) for case in CASES] +
                         [("nearest_x2", True), ("linear_half_pixel", True)])
@pytest.mark.parametrize("composite", ["lrp0", "gradient"])
def test_resize_matches_the_dense_formula(case, at_run_time, composite):
    proto, w = model(case, at_run_time=at_run_time)
    x, target = RNG.uniform(0.5, 1.5, size=(2,) + SHAPE).astype(np.float32), np.array([0, 2])
    explainer = Explainer(proto, Composite(((Family("all"), LRP0()),)) if composite == "lrp0" else "gradient")
    resize_node = next(n for n in explainer.forward_model.graph.node if n.op_type == "Resize")
    constants = {t.name for t in explainer.forward_model.graph.initializer}
    assert (resize_node.input[-1] not in constants) is at_run_time   # canonicalization folded nothing away
    got = explainer.explain(x, target=target).relevance
    want = oracle(case, x, w, target, composite == "gradient")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_the_tolerance_rejects_the_wrong_coordinate_mode():
    proto, w = model("linear_half_pixel")
    x, target = RNG.uniform(0.5, 1.5, size=(2,) + SHAPE).astype(np.float32), np.array([0, 2])
    got = Explainer(proto, "gradient").explain(x, target=target).relevance
    wrong = oracle("linear_half_pixel", x, w, target, True, transform="asymmetric")
    assert np.abs(got - wrong).max() > 1e-5 * np.abs(wrong).max()


def test_cubic_resizing_is_refused():
    proto, _ = model("linear_half_pixel", mode_override="cubic")
    with pytest.raises(ModelError, match="mode 'cubic'"):
        Explainer(proto, Composite(((Family("all"), LRP0()),)))


def test_dynamic_height_and_width():
    """x (N, 2, H, W) -> Resize(nearest x2) -> y, one explainer for two image sizes: LRP-0 with
    R_y = y * mask gives s = mask and R_x = x * (A_h^T mask A_w) per channel."""
    attrs = CASES["nearest_x2"][0]
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H2", "W2"])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    explainer = Explainer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                          Composite(((Family("all"), LRP0()),)))
    for h, w in ((3, 4), (2, 5)):
        x = RNG.uniform(0.5, 1.5, size=(2, 2, h, w)).astype(np.float32)
        mask = RNG.normal(size=(2, 2, 2 * h, 2 * w)).astype(np.float32)
        got = explainer.explain(x, target=mask).relevance
        a_h, a_w = axis_matrix(h, 2 * h, "nearest", "asymmetric"), axis_matrix(w, 2 * w, "nearest", "asymmetric")
        want = x * (a_h.T @ mask.astype(np.float64) @ a_w)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
