"""lrp_onnx/ops/gather.py against dense numpy formulas written here.

Every output element of Gather/GatherElements/GatherND/Where/Expand is one input element, so
with R = y * mask at the output the oracle is exact bookkeeping: R_x = the scatter-add of R
onto the elements picked (np.add.at), Where's R to the branch its condition picked, Expand's R
summed over the expanded axes. These are additions of at most a few float32 values: tolerance
rtol 1e-6, atol 1e-6 * max|oracle|. The wrong variant "scatter without add" (a repeated index
keeps only one share) is checked to differ where an index repeats. The same nodes are the
gradient (VJP): checked with the "gradient" composite (G = mask at the output).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.ops.families import family_of

from handler_models import LRP0_ALL, make_model


def assert_exact(actual, reference):
    np.testing.assert_allclose(actual, reference, rtol=1e-6, atol=1e-6 * (np.abs(reference).max() or 1.0))


def explain(model, x, mask, composite=LRP0_ALL):
    return lrp_onnx.Explainer(model, composite).explain(x, target=mask.astype(np.float32)).relevance


CASES = {
    # name: (node, x sample shape, y sample shape, indices, batch)
    "class_token": (helper.make_node("Gather", ["x", "i"], ["y"], name="pick", axis=1), (5, 3), (3,),
                    np.array(0, np.int64), 2),
    "repeated": (helper.make_node("Gather", ["x", "i"], ["y"], name="pick", axis=2), (2, 4), (2, 5),
                 np.array([3, 0, 3, -1, 1], np.int64), 2),
    "elements": (helper.make_node("GatherElements", ["x", "i"], ["y"], name="pick", axis=1), (3,), (4,),
                 np.array([[2, 2, 0, 1]], np.int64), 1),
    "nd": (helper.make_node("GatherND", ["x", "i"], ["y"], name="pick", batch_dims=1), (3, 4), (2,),
           np.array([[[1, 2], [1, 2]]], np.int64), 1),
}


def picked_elements(name, sample_shape, i):
    """The flat index (within one sample) of every output element, by plain numpy indexing."""
    index = np.arange(int(np.prod(sample_shape))).reshape(sample_shape)
    if name == "class_token":
        return index[0]
    if name == "repeated":
        return index[:, i]
    if name == "elements":
        return np.take_along_axis(index, i[0], axis=0)
    return np.array([index[tuple(p)] for p in i[0]])   # GatherND, batch_dims=1, one sample


@pytest.mark.parametrize("name", list(CASES))
def test_gathers_scatter_back(name):
    """R_x = np.add.at(zeros, picked, R); the gradient the same with R = mask."""
    rng = np.random.default_rng(0)
    node, x_shape, y_shape, indices, n = CASES[name]
    x = rng.normal(size=(n, *x_shape)).astype(np.float32)
    mask = rng.normal(size=(n, *y_shape))
    model = make_model([node], x_shape, y_shape, {"i": indices})
    flat_index = picked_elements(name, x_shape, indices).reshape(-1)
    xs = x.astype(np.float64).reshape(n, -1)
    for composite, top in ((LRP0_ALL, xs[:, flat_index] * mask.reshape(n, -1)), ("gradient", mask.reshape(n, -1))):
        expected = np.zeros_like(xs)
        for k in range(n):
            np.add.at(expected[k], flat_index, top[k])
        relevance = explain(model, x, mask, composite).reshape(n, -1)
        assert_exact(relevance, expected)
        if len(set(flat_index.tolist())) < flat_index.size:   # a repeated index: the add matters
            overwritten = np.zeros_like(xs)
            overwritten[:, flat_index] = top
            assert np.abs(relevance - overwritten).max() > 1e-3 * np.abs(expected).max()


def test_embedding_lookup_is_a_sink():
    """Gather from a constant table with indices computed off the relevance path (ArgMax of x):
    family "embedding", a relevance sink (the explainer reads token relevance at its output,
    inputs.py), so x's relevance is its share of the Add."""
    rng = np.random.default_rng(1)
    params = {"table": rng.normal(size=(4, 3))}
    nodes = [helper.make_node("Slice", ["x", "s", "e", "ax"], ["x3"], name="first3"),
             helper.make_node("ArgMax", ["x"], ["ids"], name="ids", axis=1, keepdims=0),
             helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
             helper.make_node("Add", ["x3", "emb"], ["y"], name="add")]
    params.update(s=np.array([0], np.int64), e=np.array([3], np.int64), ax=np.array([1], np.int64))
    model = make_model(nodes, (4,), (3,), params)
    prepared = lrp_onnx.compile.prepare(model)
    mg = prepared.graph
    assert family_of(mg, prepared.subgraph.tensors, mg.nodes["embed"]) == "embedding"
    x = rng.normal(size=(2, 4)).astype(np.float32)
    mask = np.ones((2, 3))
    relevance = lrp_onnx.Explainer(model, LRP0_ALL).explain(x, target=mask.astype(np.float32)).sources["x"]
    emb = params["table"].astype(np.float32).astype(np.float64)[x.argmax(axis=1)]
    y = x[:, :3].astype(np.float64) + emb
    share = x[:, :3] / (y + 1e-6 * np.where(y >= 0, 1, -1)) * y
    np.testing.assert_allclose(relevance[:, :3], share, rtol=1e-4, atol=1e-5 * np.abs(share).max())
    np.testing.assert_array_equal(relevance[:, 3], 0)


def test_where_gives_the_picked_branch():
    """y = Where(c, a, b) with a constant condition broadcast over the batch and a (N,1,D)
    broadcast along the rows: R_a = sum_rows R [c], R_b = R [not c]; the condition gets none."""
    rng = np.random.default_rng(2)
    cond = rng.uniform(size=(3, 4)) > 0.5
    params = {"c": cond, "s": np.array([0], np.int64), "e": np.array([1], np.int64), "ax": np.array([1], np.int64),
              "s2": np.array([1], np.int64), "e2": np.array([4], np.int64)}
    nodes = [helper.make_node("Slice", ["x", "s", "e", "ax"], ["a"], name="a"),
             helper.make_node("Slice", ["x", "s2", "e2", "ax"], ["b"], name="b"),
             helper.make_node("Where", ["c", "a", "b"], ["y"], name="where")]
    model = make_model(nodes, (4, 4), (3, 4), {k: v for k, v in params.items() if k != "c"})
    model.graph.initializer.append(numpy_helper.from_array(cond, "c"))
    assert model.graph.initializer[-1].data_type == TensorProto.BOOL
    x = rng.normal(size=(2, 4, 4)).astype(np.float32)
    mask = rng.normal(size=(2, 3, 4))
    for composite in (LRP0_ALL, "gradient"):
        relevance = explain(model, x, mask, composite)
        y = np.where(cond, x[:, :1], x[:, 1:]).astype(np.float64)
        top = y * mask if composite is LRP0_ALL else mask
        expected = np.concatenate([np.where(cond, top, 0).sum(axis=1, keepdims=True), np.where(cond, 0, top)], axis=1)
        assert_exact(relevance, expected)


def test_expand_sums_back():
    """y = Expand(x (N,1,D), (N,3,D)): R_x = sum over the 3 copies; gradient the same with mask."""
    rng = np.random.default_rng(3)
    model = make_model([helper.make_node("Expand", ["x", "shape"], ["y"], name="expand")], (1, 4), (3, 4),
                       {"shape": np.array([1, 3, 4], np.int64)})
    x = rng.normal(size=(2, 1, 4)).astype(np.float32)
    mask = rng.normal(size=(2, 3, 4))
    assert_exact(explain(model, x, mask), (x.astype(np.float64) * mask).sum(axis=1, keepdims=True))
    assert_exact(explain(model, x, mask, "gradient"), mask.sum(axis=1, keepdims=True))


def test_class_token_expanded_to_a_computed_shape():
    """ViT's prefix as torch exports it: Expand(class token, Where(Equal(s, -1), 1, s)) with
    s = [N, -1, -1], then Concat with the patches along axis 1. Shape inference leaves the
    token's sizes open, so the Concat splits R back by sizes read at run time: R_x = R[:, 1:]
    exactly; the constant token keeps R[:, :1]."""
    rng = np.random.default_rng(4)
    params = {"cls": rng.normal(size=(1, 1, 4)), "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
              "rest": np.array([-1, -1], np.int64), "minus": np.array(-1, np.int64)}
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Slice", ["shape", "zero", "one"], ["n"], name="n"),
             helper.make_node("Concat", ["n", "rest"], ["s"], name="s", axis=0),
             helper.make_node("Shape", ["s"], ["s_shape"], name="s_shape"),
             helper.make_node("ConstantOfShape", ["s_shape"], ["ones"], name="ones",
                              value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
             helper.make_node("Mul", ["ones", "minus"], ["minus_ones"], name="minus_ones"),
             helper.make_node("Equal", ["s", "minus_ones"], ["open"], name="open"),
             helper.make_node("Where", ["open", "ones", "s"], ["target"], name="target"),
             helper.make_node("Expand", ["cls", "target"], ["token"], name="expand"),
             helper.make_node("Concat", ["token", "x"], ["y"], name="cat", axis=1)]
    model = make_model(nodes, (3, 4), (4, 4), params)
    prepared = lrp_onnx.compile.prepare(model)
    assert not isinstance(prepared.graph.shape("token")[1], int), "the test needs an open size"
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    mask = rng.normal(size=(2, 4, 4))
    relevance = explain(model, x, mask)
    np.testing.assert_array_equal(relevance, (x * mask[:, 1:].astype(np.float32)))
