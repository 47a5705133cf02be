"""lrp_onnx/ops/rearrange.py: DepthToSpace (DCR, CRD), SpaceToDepth and Tile against a dense
numpy formula.

Model: x (N, 8, 2, 4) -> op -> Flatten -> Gemm, explained with LRP-0 and with the ``gradient``
composite. Oracle: the op applied in numpy (ONNX's own definitions, reshape/transpose/tile) to
the flat index of one sample says which input element every output element is; with R_f the
relevance (or gradient) at the op's output, R_x[j] = sum of R_f[k] over the k that copy j. R_f
itself is LRP-0 through one Gemm: f * w[t] (R_out = y), the gradient w[t]. Tolerance: 1e-5 of
max|R| (one Gemm of at most 64 terms and one division: a few roundings of 2^-24; moving
elements is exact). The wrong map (DCR's indices for a CRD DepthToSpace) is rejected by it.
"""
import numpy as np
import pytest
from onnx import helper

from handler_models import make_model
from lrp_onnx import Composite, Explainer, Family
from lrp_onnx.rules import LRP0

SHAPE, K = (8, 2, 4), 3
RNG = np.random.default_rng(4)


def depth_to_space(x, bs, mode):
    b, c, h, w = x.shape
    if mode == "DCR":
        tmp = x.reshape(b, bs, bs, c // bs ** 2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        tmp = x.reshape(b, c // bs ** 2, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return tmp.reshape(b, c // bs ** 2, h * bs, w * bs)


def space_to_depth(x, bs):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // bs, bs, w // bs, bs).transpose(0, 3, 5, 1, 2, 4).reshape(b, c * bs * bs, h // bs, w // bs)


CASES = {
    "depth_to_space_dcr": (dict(op_type="DepthToSpace", blocksize=2, mode="DCR"), lambda x: depth_to_space(x, 2, "DCR")),
    "depth_to_space_crd": (dict(op_type="DepthToSpace", blocksize=2, mode="CRD"), lambda x: depth_to_space(x, 2, "CRD")),
    "space_to_depth": (dict(op_type="SpaceToDepth", blocksize=2), lambda x: space_to_depth(x, 2)),
    "tile": (dict(op_type="Tile"), lambda x: np.tile(x, (1, 1, 3, 2))),
}


def model(case):
    attrs, numpy_op = CASES[case]
    attrs = dict(attrs)
    op_type = attrs.pop("op_type")
    inputs = ["x", "repeats"] if op_type == "Tile" else ["x"]
    out_size = numpy_op(np.zeros((1,) + SHAPE)).size
    params = {"w": RNG.normal(size=(K, out_size)), "repeats": np.array([1, 1, 3, 2], np.int64)}
    nodes = [helper.make_node(op_type, inputs, ["t"], **attrs), helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    return make_model(nodes, SHAPE, (K,), params), params["w"].astype(np.float32).astype(np.float64)


def oracle(numpy_op, x, w, target, gradient):
    index = numpy_op(np.arange(np.prod(SHAPE)).reshape((1,) + SHAPE)).reshape(-1)
    out = np.stack([numpy_op(sample[None]).reshape(-1) for sample in x.astype(np.float64)])
    r_out = w[target] if gradient else out * w[target]
    return np.stack([np.bincount(index, weights=row, minlength=index.max() + 1) for row in r_out]).reshape(x.shape)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("composite", ["lrp0", "gradient"])
def test_rearrangements_match_the_dense_formula(case, composite):
    proto, w = model(case)
    x, target = RNG.uniform(0.5, 1.5, size=(2,) + SHAPE).astype(np.float32), np.array([0, 2])
    explainer = Explainer(proto, Composite(((Family("all"), LRP0()),)) if composite == "lrp0" else "gradient")
    got = explainer.explain(x, target=target).relevance
    want = oracle(CASES[case][1], x, w, target, composite == "gradient")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_the_tolerance_rejects_the_wrong_depth_to_space_mode():
    proto, w = model("depth_to_space_crd")
    x, target = RNG.uniform(0.5, 1.5, size=(2,) + SHAPE).astype(np.float32), np.array([0, 2])
    got = Explainer(proto, Composite(((Family("all"), LRP0()),))).explain(x, target=target).relevance
    wrong = oracle(CASES["depth_to_space_dcr"][1], x, w, target, False)
    assert np.abs(got - wrong).max() > 1e-5 * np.abs(wrong).max()
