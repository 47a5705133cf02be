"""The public API: Explainer/explain/save, targets, layers, batches and error messages."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import Composite, Family, rules
from lrp_onnx.errors import CompositeError, InputError, ModelError, UnsupportedOpError

RNG = np.random.default_rng(0)
LRP0_ALL = {"rules": [{"where": "all", "rule": {"rule": "LRP0"}}]}


def mlp(with_softmax=False, extra_node=None):
    """x(N,6) -> Gemm(5) -> Relu -> [extra] -> Gemm(3) [-> Softmax]."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["a"], name="relu1")]
    last = "a"
    if extra_node:
        nodes.append(helper.make_node(extra_node, ["a"], ["e"], name="extra"))
        last = "e"
    nodes.append(helper.make_node("Gemm", [last, "W2", "b2"], ["logits"], name="fc2", transB=1))
    out = "logits"
    if with_softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
        out = "probs"
    inits = [numpy_helper.from_array(RNG.normal(size=s).astype(np.float32), n)
             for n, s in (("W1", (5, 6)), ("b1", (5,)), ("W2", (3, 5)), ("b2", (3,)))]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model():
    return mlp(with_softmax=True)


@pytest.fixture(scope="module")
def x():
    return RNG.normal(size=(5, 6)).astype(np.float32)


def test_output_is_the_logits_and_relevance_has_the_input_shape(model, x):
    ex = lrp_onnx.Explainer(model, composite="epsilon_plus")
    res = ex.explain(x)
    w1, b1, w2, b2 = (numpy_helper.to_array(t) for t in model.graph.initializer)
    logits = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(res.output, logits, rtol=1e-5, atol=1e-5)
    assert res.relevance.shape == x.shape and res.relevance.dtype == np.float32
    np.testing.assert_array_equal(res.target, logits.argmax(1))


def test_the_callers_model_is_not_modified(model):
    before = model.SerializeToString()
    lrp_onnx.Explainer(model, composite="epsilon_plus")
    assert model.SerializeToString() == before


def test_target_forms_agree(model, x):
    ex = lrp_onnx.Explainer(model, composite="epsilon_plus")
    predicted = ex.explain(x)
    by_int = ex.explain(x, target=predicted.target)
    np.testing.assert_array_equal(by_int.relevance, predicted.relevance)
    mask = np.zeros((len(x), 3), np.float32)
    mask[np.arange(len(x)), predicted.target] = 1
    np.testing.assert_array_equal(ex.explain(x, target=mask).relevance, predicted.relevance)
    # one int for the whole batch
    all_two = ex.explain(x, target=2)
    np.testing.assert_array_equal(all_two.target, [2] * len(x))
    # the relevance is linear in the mask: explaining class 0 + class 2 = the sum of both
    both = np.zeros((len(x), 3), np.float32)
    both[:, [0, 2]] = 1
    summed = ex.explain(x, target=0).relevance + all_two.relevance
    np.testing.assert_allclose(ex.explain(x, target=both).relevance, summed, rtol=1e-5, atol=1e-6)


def test_each_sample_is_explained_as_if_it_were_alone(model, x):
    """Per-sample statistics (the relative epsilon) keep a sample's explanation independent of
    its batch-mates; float32 kernels on different batch sizes may differ in the last bits."""
    comp = Composite(((Family("all"), rules.Epsilon(0.01, relative=0.25)),))
    ex = lrp_onnx.Explainer(model, composite=comp)
    batch = ex.explain(x).relevance
    for i in range(len(x)):
        np.testing.assert_allclose(ex.explain(x[i:i + 1]).relevance[0], batch[i], rtol=1e-5, atol=1e-6)


def test_saved_explainer_runs_in_a_bare_onnxruntime_session(model, x, tmp_path):
    ex = lrp_onnx.Explainer(model, composite="tutorial_mlp")
    expected = ex.explain(x, target=1)
    path = tmp_path / "explainer.onnx"
    ex.save(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "lrp_target_mask"]
    mask = np.zeros((len(x), 3), np.float32)
    mask[:, 1] = 1
    logits, relevance = session.run(None, {"x": x, "lrp_target_mask": mask})
    np.testing.assert_array_equal(relevance, expected.relevance)
    np.testing.assert_array_equal(logits, expected.output)
    # NaN in the mask selects the predicted class
    _, predicted = session.run(None, {"x": x, "lrp_target_mask": np.full((len(x), 3), np.nan, np.float32)})
    np.testing.assert_array_equal(predicted, ex.explain(x).relevance)


def test_layers_returns_intermediate_relevance(model, x):
    ex = lrp_onnx.Explainer(model, composite=LRP0_ALL)
    assert ex.layer_names[:2] == ["x", "h"]
    res = ex.explain(x, layers=("a", "x"))
    np.testing.assert_array_equal(res.layers["x"], res.relevance)
    # the relevance at the Relu output equals the output relevance split by LRP-0 of fc2
    w2, b2 = numpy_helper.to_array(model.graph.initializer[2]), numpy_helper.to_array(model.graph.initializer[3])
    a = np.maximum(x @ numpy_helper.to_array(model.graph.initializer[0]).T + numpy_helper.to_array(model.graph.initializer[1]), 0)
    z = a @ w2.T + b2
    r_top = np.zeros_like(z)
    r_top[np.arange(len(x)), z.argmax(1)] = z.max(1)
    expected = a * ((r_top / (z + 1e-9 * np.where(z >= 0, 1, -1))) @ w2)
    np.testing.assert_allclose(res.layers["a"], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(InputError, match="no relevance for tensor"):
        ex.explain(x, layers=("no_such_tensor",))


def test_fan_out_sums_the_relevance_of_every_use():
    """x feeds two Gemms whose outputs are concatenated; under LRP-0 this equals one Gemm with
    the stacked weight, so R_x = x * (W_stack^T s) with s = R / z (dense formula)."""
    wa, wb = RNG.normal(size=(2, 4)).astype(np.float32), RNG.normal(size=(3, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "Wa"], ["a"], name="ga", transB=1),
             helper.make_node("Gemm", ["x", "Wb"], ["b"], name="gb", transB=1),
             helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1)]
    graph = helper.make_graph(nodes, "fan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(wa, "Wa"), numpy_helper.from_array(wb, "Wb")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    res = lrp_onnx.Explainer(proto, composite=LRP0_ALL).explain(x, target=np.ones((3, 5), np.float32))
    w = np.concatenate([wa, wb]).astype(np.float64)
    z = x @ w.T
    expected = x * ((z / z) @ w)
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_unsupported_op_names_the_node_and_the_supported_ops():
    with pytest.raises(UnsupportedOpError) as err:
        lrp_onnx.Explainer(mlp(extra_node="Cos"))
    message = str(err.value)
    assert "'extra' (Cos)" in message and "supported ops:" in message and "Conv" in message


def test_bad_inputs_are_clear_errors(model, x):
    ex = lrp_onnx.Explainer(model, composite="epsilon_plus")
    with pytest.raises(InputError, match=r"expects \('N', 6\)"):
        ex.explain(x[:, :4])
    with pytest.raises(InputError, match="rank"):
        ex.explain(x[0])
    with pytest.raises(InputError, match="NaN"):
        bad = x.copy()
        bad[0, 0] = np.nan
        ex.explain(bad)
    with pytest.raises(InputError, match="numeric"):
        ex.explain(np.array([["a"] * 6]))
    with pytest.raises(InputError, match="out of range"):
        ex.explain(x, target=3)
    with pytest.raises(InputError, match="mask must have the output's shape"):
        ex.explain(x, target=np.ones((2, 3), np.float32))
    with pytest.raises(InputError, match="empty"):
        ex.explain(x[:0])
    # float64 and integer inputs are converted to the model's float32
    np.testing.assert_allclose(ex.explain(x.astype(np.float64)).relevance, ex.explain(x).relevance)


def test_bad_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        lrp_onnx.Explainer(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ModelError, match="garbage.onnx"):
        lrp_onnx.Explainer(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mlp().SerializeToString()[:150])
    with pytest.raises(ModelError):
        lrp_onnx.Explainer(truncated)


def test_composites_by_name_object_dict_and_json_file(model, x, tmp_path):
    by_object = lrp_onnx.Explainer(model, composite=Composite(((Family("all"), rules.LRP0()),))).explain(x)
    path = tmp_path / "lrp0.json"
    path.write_text(json.dumps(LRP0_ALL))
    by_file = lrp_onnx.Explainer(model, composite=str(path)).explain(x)
    by_dict = lrp_onnx.Explainer(model, composite=LRP0_ALL).explain(x)
    np.testing.assert_array_equal(by_file.relevance, by_object.relevance)
    np.testing.assert_array_equal(by_dict.relevance, by_object.relevance)
    with pytest.raises(CompositeError, match="unknown composite 'nope'"):
        lrp_onnx.Explainer(model, composite="nope")
    with pytest.raises(CompositeError, match="no rule for layer 'fc2'"):
        lrp_onnx.Explainer(model, composite=Composite(((lrp_onnx.Name("fc1"), rules.LRP0()),)))


def test_lrp0_conserves_without_biases():
    proto = mlp()
    for t in proto.graph.initializer:
        if t.name.startswith("b"):
            t.CopyFrom(numpy_helper.from_array(np.zeros(t.dims, np.float32), t.name))
    x = np.abs(RNG.normal(size=(4, 6))).astype(np.float32)
    res = lrp_onnx.Explainer(proto, composite=LRP0_ALL).explain(x)
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-4)


@pytest.mark.parametrize("opset", [13, 18, 20])
def test_models_of_other_opsets(opset, x):
    """Opset < 17 is lifted to 17; opset >= 18 gets the input-form ReduceMean of the relative
    epsilon. The result is the same as at opset 17 (same float32 ops)."""
    reference = mlp()
    other = onnx.ModelProto()
    other.CopyFrom(reference)
    other.opset_import[0].version = opset
    comp = Composite(((Family("all"), rules.Epsilon(0.01, relative=0.25)),))
    expected = lrp_onnx.Explainer(reference, composite=comp).explain(x).relevance
    got = lrp_onnx.Explainer(other, composite=comp, providers=["CPUExecutionProvider"]).explain(x).relevance
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_an_explainer_above_the_protobuf_limit_runs_through_external_data(model, x, monkeypatch):
    """create_session opens explainers above protobuf's 2 GB limit from a temporary file with
    external data; with the limit lowered to 1 byte this small model takes that path, and its
    results are those of the in-memory session."""
    expected = lrp_onnx.Explainer(model, composite="epsilon_plus").explain(x)
    monkeypatch.setattr(lrp_onnx.explainer, "PROTOBUF_LIMIT", 1)
    saved = []
    real_save = lrp_onnx.explainer.save_model
    monkeypatch.setattr(lrp_onnx.explainer, "save_model", lambda *a, **k: saved.append(k) or real_save(*a, **k))
    got = lrp_onnx.Explainer(model, composite="epsilon_plus").explain(x)
    assert saved == [{"external_data": True}]
    np.testing.assert_array_equal(got.relevance, expected.relevance)


def test_forward_model_is_the_forward_part_of_the_explainer(model):
    ex = lrp_onnx.Explainer(model, composite="epsilon_plus")
    forward, full = ex.forward_model, ex.model
    assert [n.name for n in forward.graph.node] == [n.name for n in full.graph.node][:len(forward.graph.node)]
    assert forward.graph.input[0] == full.graph.input[0]
