"""Several inputs, token ids and per-source relevance (lrp_onnx/inputs.py, DESIGN.md section 8).

The token model is BERT's embedding layer and a per-token linear head, written with
onnx.helper: word, token-type and position lookups (the position ids are Range(T), shared by
the batch, as torch exports them) summed, then MatMul + bias to (N, T, C) logits. Its relevance
is checked against a dense float64 formula of the same rules: LRP-0 at the head, the Add split
R_i = x_i / stab(sum) R with stab(z) = z + 1e-6 sgn(z) (README, Supported ops). Tolerance: 1e-5
of max|R|, float32 rounding (6e-8) over a dozen operations with the divisions' amplification
|R| / |z|, far below it for these well-conditioned sums.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.errors import InputError

LRP0_ALL = {"rules": [{"where": "all", "rule": {"rule": "LRP0"}}]}
VOCAB, TYPES, POSITIONS, HIDDEN, CLASSES = 11, 2, 16, 4, 5
TABLES = ("word", "token_type", "position")


def token_model(length="T", bias=True, seed=0) -> onnx.ModelProto:
    """input_ids, token_type_ids (int64, (N, length)) -> logits (N, length, CLASSES)."""
    rng = np.random.default_rng(seed)
    params = {"word": rng.normal(size=(VOCAB, HIDDEN)), "token_type": rng.normal(size=(TYPES, HIDDEN)),
              "position": rng.normal(size=(POSITIONS, HIDDEN)), "W": rng.normal(size=(HIDDEN, CLASSES)),
              "b": rng.normal(size=CLASSES) if bias else np.zeros(CLASSES)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("zero", 0), ("one", 1), ("axis0", [0]))]
    nodes = [
        helper.make_node("Gather", ["word", "input_ids"], ["w"], name="word_lookup"),
        helper.make_node("Gather", ["token_type", "token_type_ids"], ["ty"], name="type_lookup"),
        helper.make_node("Shape", ["input_ids"], ["length"], name="length", start=1, end=2),
        helper.make_node("Squeeze", ["length"], ["length_scalar"], name="length_scalar"),
        helper.make_node("Range", ["zero", "length_scalar", "one"], ["positions"], name="positions"),
        helper.make_node("Unsqueeze", ["positions", "axis0"], ["position_ids"], name="position_ids"),
        helper.make_node("Gather", ["position", "position_ids"], ["p"], name="position_lookup"),
        helper.make_node("Add", ["w", "ty"], ["e"], name="add_type"),
        helper.make_node("Add", ["e", "p"], ["h"], name="add_position"),
        helper.make_node("MatMul", ["h", "W"], ["z"], name="head"),
        helper.make_node("Add", ["z", "b"], ["logits"], name="head_bias"),
    ]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", length]) for n in ("input_ids", "token_type_ids")]
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", length, CLASSES])
    graph = helper.make_graph(nodes, "tokens", ids, [logits], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def tokens(n=3, length=6, seed=1):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, VOCAB, (n, length)), "token_type_ids": rng.integers(0, TYPES, (n, length))}


def stab(z):
    return z + 1e-6 * np.where(z >= 0, 1.0, -1.0)


def dense_token_relevance(model, feeds):
    """{table: (N, T)} and the target at the last position, from the model's float64 weights."""
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    ids, types = feeds["input_ids"], feeds["token_type_ids"]
    w, ty = p["word"][ids], p["token_type"][types]
    pos = np.broadcast_to(p["position"][:ids.shape[1]], w.shape)
    e = w + ty
    h = e + pos
    z = h @ p["W"] + p["b"]
    target = z[:, -1].argmax(-1)
    r_top = np.zeros_like(z)
    r_top[np.arange(len(z)), -1, target] = z[np.arange(len(z)), -1, target]
    r_h = h * ((r_top / stab(z)) @ p["W"].T)   # LRP-0, the bias in z
    r_e, r_pos = e / stab(h) * r_h, pos / stab(h) * r_h
    r_w, r_ty = w / stab(e) * r_e, ty / stab(e) * r_e
    return {"word": r_w.sum(-1), "token_type": r_ty.sum(-1), "position": r_pos.sum(-1)}, target


def close(got, expected, scale=None):
    scale = np.abs(expected).max() if scale is None else scale
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def model():
    return token_model()


@pytest.fixture(scope="module")
def explainer(model):
    return lrp_onnx.Explainer(model, composite=LRP0_ALL)


def test_token_relevance_per_embedding_table_matches_the_dense_formula(model, explainer):
    feeds = tokens()
    res = explainer.explain(feeds)
    expected, target = dense_token_relevance(model, feeds)
    assert sorted(res.sources) == sorted(TABLES)
    scale = max(np.abs(r).max() for r in expected.values())
    for table in TABLES:
        assert res.sources[table].shape == feeds["input_ids"].shape
        close(res.sources[table], expected[table], scale)
    close(res.relevance, sum(expected.values()), scale)   # per token: the sum over the tables
    np.testing.assert_array_equal(res.target, target)
    assert np.all(res.relevance[:, :-1] == 0)   # no attention: only the explained position has relevance


def test_lrp0_without_bias_conserves_over_all_sources():
    res = lrp_onnx.Explainer(token_model(bias=False), composite=LRP0_ALL).explain(tokens())
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-5)


def test_each_sample_keeps_its_own_position_relevance(explainer):
    """The position lookup is shared by the batch ((1, T) ids): lrp_onnx expands it to the
    batch, so that a sample's position relevance is its own, not the batch's sum."""
    feeds = tokens(n=3)
    batch = explainer.explain(feeds)
    for i in range(3):
        alone = explainer.explain({k: v[i:i + 1] for k, v in feeds.items()})
        for table in TABLES:
            np.testing.assert_allclose(alone.sources[table][0], batch.sources[table][i], rtol=1e-6, atol=1e-7)


def test_targets_of_a_sequence_output(explainer):
    """An int is the class at the last position; a mask (N, T, C) may pick any position."""
    feeds = tokens()
    default = explainer.explain(feeds)
    np.testing.assert_array_equal(explainer.explain(feeds, target=default.target).relevance, default.relevance)
    mask = np.zeros((3, 6, CLASSES), np.float32)
    mask[:, 0, 2] = 1
    first = explainer.explain(feeds, target=mask)
    assert np.all(first.relevance[:, 1:] == 0) and np.all(first.relevance[:, 0] != 0)
    with pytest.raises(InputError, match="out of range: the model has 5 outputs per position"):
        explainer.explain(feeds, target=5)


def test_saved_explainer_has_one_output_per_source(explainer, tmp_path):
    feeds = tokens()
    res = explainer.explain(feeds)
    explainer.save(tmp_path / "tokens.onnx")
    session = ort.InferenceSession(str(tmp_path / "tokens.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "token_type_ids", "lrp_target_mask"]
    names = [o.name for o in session.get_outputs()]
    assert names == ["logits", "lrp_relevance"] + [f"lrp_relevance:{t}" for t in ("word", "token_type", "position")]
    outputs = session.run(None, {**feeds, "lrp_target_mask": np.full((3, 6, CLASSES), np.nan, np.float32)})
    np.testing.assert_array_equal(outputs[1], res.relevance)
    for table, got in zip(("word", "token_type", "position"), outputs[2:]):
        np.testing.assert_array_equal(got, res.sources[table])


def two_float_inputs():
    """x, z (N, 4) -> Add -> Gemm -> y (N, 3)."""
    w = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Add", ["x", "z"], ["s"], name="add"),
                               helper.make_node("Gemm", ["s", "W"], ["y"], name="fc", transB=1)], "two",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("x", "z")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w.astype(np.float64)


def test_several_float_inputs_each_get_their_relevance(tmp_path):
    proto, w = two_float_inputs()
    rng = np.random.default_rng(3)
    x, z = rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
    ex = lrp_onnx.Explainer(proto, composite=LRP0_ALL)
    res = ex.explain({"x": x, "z": z}, target=1)
    s = x.astype(np.float64) + z
    r_s = s * w[1]   # LRP-0 of y_1 = s . w_1 without bias: R_s = s w_1 / y_1 * y_1
    assert res.relevance is None and sorted(res.sources) == ["x", "z"]
    close(res.sources["x"], x / stab(s) * r_s)
    close(res.sources["z"], z / stab(s) * r_s)
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-5)
    ex.save(tmp_path / "two.onnx")
    names = [o.name for o in ort.InferenceSession(str(tmp_path / "two.onnx")).get_outputs()]
    assert names == ["y", "lrp_relevance:x", "lrp_relevance:z"]


@pytest.mark.parametrize("change, message", [
    (lambda f: {"input_ids": f["input_ids"]}, r"missing model input\(s\) 'token_type_ids' \(int64\[N, T\]\)"),
    (lambda f: {**f, "mask": f["input_ids"]}, r"unknown input\(s\) \['mask'\]"),
    (lambda f: f["input_ids"], r"the model has 2 inputs, .*: pass a dict \{name: array\}"),
    (lambda f: {**f, "input_ids": f["input_ids"].astype(np.float32)},
     r"input 'input_ids' holds integers \(int64, e.g. token ids\): pass an integer array, got dtype float32"),
    (lambda f: {**f, "input_ids": f["input_ids"] + VOCAB},
     r"input 'input_ids' has ids from \d+ to \d+; its embedding table 'word' has 11 rows"),
    (lambda f: {**f, "token_type_ids": f["token_type_ids"][:, :4]},
     r"input 'token_type_ids' has size 4 on axis 1 \('T'\), but input 'input_ids' has 6: they must match"),
    (lambda f: {**f, "token_type_ids": f["token_type_ids"][:2]},
     r"input 'token_type_ids' has size 2 on the batch axis, but input 'input_ids' has 3"),
    (lambda f: {**f, "input_ids": f["input_ids"][0]}, r"input 'input_ids' has shape \(6,\); the model expects rank 2"),
])
def test_bad_inputs_name_the_problem(explainer, change, message):
    with pytest.raises(InputError, match=message):
        explainer.explain(change(tokens()))


def test_bad_float_inputs_of_a_two_input_model_name_the_input():
    ex = lrp_onnx.Explainer(two_float_inputs()[0], composite=LRP0_ALL)
    good = np.ones((2, 4), np.float32)
    with pytest.raises(InputError, match="input 'z' contains NaN or Inf"):
        ex.explain({"x": good, "z": np.full((2, 4), np.nan)})
    with pytest.raises(InputError, match=r"input 'x' has shape \(2, 5\); the model expects \('N', 4\) \(axis 1\)"):
        ex.explain({"x": np.ones((2, 5)), "z": good})


def test_gradient_x_input_at_the_embeddings(model):
    """The gradient methods read the same sources: e * dscore/de, summed over the hidden axis
    (dense: the score z[n, -1, c] = h[n, -1] . W[:, c] + b[c] has gradient W[:, c] at the last token)."""
    feeds = tokens()
    res = lrp_onnx.Explainer(model, composite="gradient_x_input").explain(feeds)
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    w = p["word"][feeds["input_ids"]]
    expected = np.zeros(w.shape[:2])
    expected[:, -1] = (w[:, -1] * p["W"][:, res.target].T).sum(-1)
    close(res.sources["word"], expected)
