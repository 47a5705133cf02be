"""Dynamic sizes: one explainer compiled with a symbolic sequence length explains inputs of any
length, each exactly as an explainer compiled for that length (static shapes) does.

Models: the token model of test_inputs (embedding lookups, a per-token head), and one attention
block on top of it (Q K^T, Softmax, A V, a residual Add, and a broadcast Add of the last token's
state, whose relevance is summed back over a symbolic axis), under AttnLRP and CP-LRP; a Hugging
Face Llama exported with a dynamic sequence (RoPE's Slices), against the same export with the
length fixed; a CNN with dynamic height and width (Conv, MaxPool, AveragePool,
GlobalAveragePool), against compiles with the size fixed.
Tolerance: 1e-6 of max|R|: the same float32 operations on the same numbers, where only
onnxruntime's choice of kernel for a shape may change the order of a sum (a few ulps).
"""
import numpy as np
import onnx
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


def llama_export(directory):
    """A Hugging Face LlamaForCausalLM (1 layer, GQA 4/2 heads of 4, RoPE, RMSNorm, SwiGLU;
    seeded random weights), tokens in, logits out, exported by torch's dynamo exporter with the
    batch and the sequence dynamic (transformers 5's masks use aten::diff, which the TorchScript
    exporter lacks). RoPE's rotate_half slices the last axis of (N, heads, T, head_dim) tensors."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                      attn_implementation="eager", use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

    path = directory / "llama.onnx"
    dims = {0: torch.export.Dim("N", min=1, max=64), 1: torch.export.Dim("T", min=2, max=16)}
    with torch.no_grad():
        torch.onnx.export(Logits().eval(), (torch.zeros(2, 5, dtype=torch.long),), str(path), dynamo=True,
                          opset_version=18, input_names=["input_ids"], output_names=["logits"], dynamic_shapes=(dims,),
                          verbose=False)
    return onnx.load(str(path))


def with_length(model, length):
    """The same model with its sequence axis fixed to ``length`` (inputs and outputs; the
    exporter's symbolic shapes of the tensors inside dropped, so shape inference makes them static)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in list(fixed.graph.input) + list(fixed.graph.output):
        value.type.tensor_type.shape.dim[1].dim_value = length
    return fixed


def test_llama_with_a_dynamic_sequence_compiles_once_and_explains_every_length(tmp_path):
    """RoPE's Slice nodes find the elements they picked from the input's run-time shape
    (ops/slicing.py), so the dynamic export compiles once; each length explains exactly as the
    model compiled with that length fixed does."""
    model = llama_export(tmp_path)
    dynamic = lrp_onnx.Explainer(model, composite="attnlrp")
    assert dynamic.compiled.inputs[0].shape == ("N", "T")
    rng = np.random.default_rng(0)
    for length in LENGTHS:
        feeds = {"input_ids": rng.integers(0, 40, (2, length))}
        static = lrp_onnx.Explainer(with_length(model, length), composite="attnlrp")
        assert static.compiled.inputs[0].shape == ("N", length)
        got, expected = dynamic.explain(feeds), static.explain(feeds)
        np.testing.assert_array_equal(got.output, expected.output)
        scale = np.abs(expected.relevance).max()
        assert got.relevance.shape == (2, length) and scale > 0
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


def image_model(height="H", width="W", seed=5):
    """x (N, 2, height, width) -> Conv 3x3 pad 1 -> Relu -> Conv 3x3 stride 2 pad 1 (16 channels)
    -> Relu -> Conv 3x3 SAME_UPPER (f^T as a flipped Conv: 16 input channels) -> Relu -> MaxPool
    2x2 stride 2 -> AveragePool 3x3 stride 2 pad 1 (count_include_pad) -> GlobalAveragePool ->
    Flatten -> Gemm (3 classes). Odd sizes leave rows that no stride-2 window reaches."""
    rng = np.random.default_rng(seed)
    weights = {"W1": (4, 2, 3, 3), "B1": (4,), "W2": (16, 4, 3, 3), "B2": (16,), "W3": (4, 16, 3, 3), "B3": (4,),
               "Wfc": (3, 4), "Bfc": (3,)}
    inits = [numpy_helper.from_array(rng.normal(scale=0.5, size=shape).astype(np.float32), name)
             for name, shape in weights.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "W2", "B2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
        helper.make_node("Conv", ["a2", "W3", "B3"], ["c3"], name="conv3", kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c3"], ["a3"], name="relu3"),
        helper.make_node("MaxPool", ["a3"], ["m"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["m"], ["p"], name="avgpool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wfc", "Bfc"], ["y"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, height, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(nodes, "cnn", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("composite, maxpool", [("epsilon_plus", "winner"), ("epsilon_plus", "avg"),
                                                ("epsilon_plus_flat", "winner")])
def test_a_cnn_with_dynamic_height_and_width_explains_every_size_as_a_static_compile_does(composite, maxpool):
    """Conv, MaxPool (both readings), AveragePool and GlobalAveragePool read their geometry at
    run time (ops.linear.conv_geometry), Flat its ones: one explainer, three image sizes (even,
    odd and mixed with stride-2 layers), each equal to a compile with that size fixed."""
    dynamic = lrp_onnx.Explainer(image_model(), composite=composite, maxpool=maxpool)
    rng = np.random.default_rng(1)
    for height, width in ((8, 8), (11, 9), (13, 16)):
        x = rng.normal(size=(2, 2, height, width)).astype(np.float32)
        got = dynamic.explain(x)
        expected = lrp_onnx.Explainer(image_model(height, width), composite=composite, maxpool=maxpool).explain(x)
        np.testing.assert_array_equal(got.output, expected.output)
        scale = np.abs(expected.relevance).max()
        assert got.relevance.shape == x.shape and scale > 0
        np.testing.assert_allclose(got.relevance, expected.relevance, rtol=0, atol=1e-6 * scale)


def one_layer(node, composite="epsilon_plus"):
    """x (N, 1, H, W) -> ``node`` (its weight "W": 2 filters of 3x3) -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None, None, None])
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "W")
    model = helper.make_model(helper.make_graph([node], "cnn", [x], [y], [weight]),
                              opset_imports=[helper.make_opsetid("", 17)])
    return lrp_onnx.Explainer(model, composite=composite)


@pytest.mark.parametrize("node, composite, message", [
    (helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=[3, 3]), "epsilon_gamma_box",
     r"tensor 'x' needs static dimensions after the batch axis"),   # ZBox's bounds are constants of its size
    (helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                      auto_pad="SAME_UPPER"),
     "epsilon_plus", r"Conv 'conv' has SAME_UPPER padding with strides \[2, 2\], whose padding depends on the spatial"),
    (helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
     "epsilon_plus", r"AveragePool 'pool' has ceil_mode"),
], ids=["zbox", "same-strided", "ceil_mode"])
def test_static_sizes_a_handler_needs_are_named(node, composite, message):
    """What needs the spatial size itself is an error naming the node or tensor and what to do."""
    with pytest.raises(lrp_onnx.errors.ModelError, match=message):
        one_layer(node, composite)


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
