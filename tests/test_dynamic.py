"""Dynamic sizes: one explainer compiled with a symbolic sequence length explains inputs of any
length, each exactly as an explainer compiled for that length (static shapes) does.

Models: the token model of test_inputs (embedding lookups, a per-token head), and one attention
block on top of it (Q K^T, Softmax, A V, a residual Add, and a broadcast Add of the last token's
state, whose relevance is summed back over a symbolic axis), under AttnLRP and CP-LRP.
Tolerance: 1e-6 of max|R|: the same float32 operations on the same numbers, where only
onnxruntime's choice of kernel for a shape may change the order of a sum (a few ulps).
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from test_inputs import CLASSES, HIDDEN, LRP0_ALL, token_model, tokens

LENGTHS = (3, 5, 9)


def attention_model(length="T", seed=4):
    """The token model's embeddings -> one attention head with a residual -> + the last token's
    state (broadcast over the sequence) -> per-token logits (N, length, CLASSES)."""
    model = token_model(length, seed=seed)
    rng = np.random.default_rng(seed)
    graph = model.graph
    head = next(n for n in graph.node if n.name == "head")
    head.input[0] = "mixed"
    graph.initializer.extend(numpy_helper.from_array(rng.normal(size=(HIDDEN, HIDDEN)).astype(np.float32), name)
                             for name in ("Wq", "Wk", "Wv"))
    graph.initializer.extend([numpy_helper.from_array(np.array(HIDDEN ** -0.5, np.float32), "scale"),
                              numpy_helper.from_array(np.array(-1, np.int64), "last"),
                              numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    block = [
        helper.make_node("MatMul", ["h", "Wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["h", "Wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["h", "Wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scaled"),
        helper.make_node("Softmax", ["scaled"], ["attention"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["attention", "v"], ["context"], name="context"),
        helper.make_node("Add", ["h", "context"], ["residual"], name="residual"),
        helper.make_node("Gather", ["residual", "last"], ["last_state"], name="last_state", axis=1),
        helper.make_node("Unsqueeze", ["last_state", "axis1"], ["last_state_1"], name="last_state_1"),
        helper.make_node("Add", ["residual", "last_state_1"], ["mixed"], name="mixed"),
    ]
    nodes = list(graph.node)
    at = nodes.index(head)
    del graph.node[:]
    graph.node.extend(nodes[:at] + block + nodes[at:])
    return model


@pytest.mark.parametrize("build, composite", [(token_model, LRP0_ALL), (attention_model, "attnlrp"),
                                              (attention_model, "cp_lrp")], ids=["tokens", "attnlrp", "cp_lrp"])
def test_one_explainer_explains_every_length_as_a_static_compile_does(build, composite):
    dynamic = lrp_onnx.Explainer(build(), composite=composite)
    assert dynamic.compiled.inputs[0].shape == ("N", "T")
    for length in LENGTHS:
        feeds = tokens(n=2, length=length, seed=length)
        got = dynamic.explain(feeds)
        expected = lrp_onnx.Explainer(build(length), composite=composite).explain(feeds)
        np.testing.assert_array_equal(got.output, expected.output)
        np.testing.assert_array_equal(got.target, expected.target)
        assert got.relevance.shape == (2, length)
        scale = np.abs(expected.relevance).max()
        assert scale > 0
        for name, relevance in expected.sources.items():
            np.testing.assert_allclose(got.sources[name], relevance, rtol=0, atol=1e-6 * scale)
        np.testing.assert_allclose(got.relevance, expected.relevance, rtol=0, atol=1e-6 * scale)


def test_a_mask_on_a_dynamic_sequence_output():
    """The target mask is shaped like the output, its length that of the input."""
    ex = lrp_onnx.Explainer(attention_model(), composite="attnlrp")
    for length in (4, 7):
        feeds = tokens(n=2, length=length, seed=length)
        default = ex.explain(feeds)
        mask = np.zeros((2, length, CLASSES), np.float32)
        mask[np.arange(2), -1, default.target] = 1
        np.testing.assert_array_equal(ex.explain(feeds, target=mask).relevance, default.relevance)
        np.testing.assert_array_equal(ex.explain(feeds, target=default.target).relevance, default.relevance)


def test_static_sizes_a_handler_needs_are_named():
    """A Conv's transposed op needs its spatial sizes: dynamic ones are an error naming the
    tensor and why."""
    conv = helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=[3, 3])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, None, None])
    graph = helper.make_graph([conv], "cnn", [x], [y],
                              [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(lrp_onnx.errors.ModelError, match=r"tensor 'x' needs static dimensions after the batch axis"):
        lrp_onnx.Explainer(model, composite="epsilon_plus")


def test_the_saved_explainer_takes_any_length(tmp_path):
    """The standalone explainer keeps the symbolic length: a bare onnxruntime session runs it
    at two lengths, with a NaN mask shaped like each output, and gives explain's results."""
    ex = lrp_onnx.Explainer(attention_model(), composite="cp_lrp")
    ex.save(tmp_path / "dynamic.onnx")
    session = ort.InferenceSession(str(tmp_path / "dynamic.onnx"), providers=["CPUExecutionProvider"])
    for length in (4, 8):
        feeds = tokens(n=2, length=length, seed=length)
        outputs = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, {**feeds, "lrp_target_mask": np.full((2, length, CLASSES), np.nan,
                                                                                  np.float32)})))
        np.testing.assert_array_equal(outputs["lrp_relevance"], ex.explain(feeds).relevance)
