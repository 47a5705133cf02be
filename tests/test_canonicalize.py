"""Each canonicalization pass leaves the model's outputs unchanged (onnxruntime before and after)
and does what its docstring says. Tolerance: float32 outputs of reordered arithmetic (folded
BatchNorm, alpha/beta folded into W) agree to 1e-5 relative to their scale (tiny graphs, depth
<= 3, fan-in <= 54: a folded weight is off by <= 2 ulps and a reordered dot product of 54 terms
by <= 54 * 2^-24 = 3.2e-6 of sum|terms|; an a-priori bound, tests/tolerances.py). A fold that
drops the BatchNorm's epsilon fails it (test_check_pass_rejects_a_fold_that_drops_epsilon)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lrp_onnx.canonicalize import (
    PASSES, assign_node_names, canonicalize, constants_to_initializers, drop_identity, fold_batchnorm,
    fold_batchnorm_forward,
    fold_shape_arithmetic, fuse_matmul_add, normalize_gemm, strip_output_softmax,
)
from lrp_onnx.load import infer_shapes

RNG = np.random.default_rng(0)


def init(name, shape, positive=False):
    value = RNG.normal(size=shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(value) + 0.5 if positive else value, name)


def model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    infer_shapes(proto)
    return proto


def run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def check_pass(pass_fn, proto, x, expect_changed=True):
    """Apply ``pass_fn`` to a copy; outputs must agree; returns the new model."""
    before = run(proto, x)
    after_model = onnx.ModelProto()
    after_model.CopyFrom(proto)
    assert pass_fn(after_model) is expect_changed
    onnx.checker.check_model(after_model)
    after = run(after_model, x)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    return after_model


def ops(proto):
    return [n.op_type for n in proto.graph.node]


X2 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
Y2 = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
X4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])


def test_assign_node_names_fills_empty_names():
    proto = model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="r"),
                   helper.make_node("Gemm", ["b", "W"], ["y"], transB=1)], [X2], [Y2], [init("W", (3, 4))])
    out = check_pass(assign_node_names, proto, RNG.normal(size=(2, 4)).astype(np.float32))
    names = [n.name for n in out.graph.node]
    assert len(set(names)) == 3 and all(names) and names[1] == "r"


def test_assign_node_names_renames_duplicates():
    """onnxruntime refuses duplicate names, so this one is checked on the structure alone."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["a"], name="r"), helper.make_node("Relu", ["a"], ["y"], name="r")],
                              "g", [X2], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert assign_node_names(proto)
    assert [n.name for n in proto.graph.node] == ["r", "r_1"]


def test_constants_become_initializers():
    weight = helper.make_tensor("wv", TensorProto.FLOAT, [3, 4], RNG.normal(size=12).astype(np.float32))
    proto = model([helper.make_node("Constant", [], ["W"], value=weight), helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
                  [X2], [Y2])
    out = check_pass(constants_to_initializers, proto, RNG.normal(size=(2, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"] and [t.name for t in out.graph.initializer] == ["W"]


def test_drop_identity_and_dropout_including_one_at_the_output():
    proto = model(
        [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Dropout", ["i"], ["d"]),
         helper.make_node("Gemm", ["d", "W"], ["g"], transB=1), helper.make_node("Identity", ["g"], ["y"])],
        [X2], [Y2], [init("W", (3, 4))])
    out = check_pass(drop_identity, proto, RNG.normal(size=(2, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"] and out.graph.node[0].output[0] == "y"


def test_dropout_with_a_used_mask_stays():
    mask_out = helper.make_tensor_value_info("m", TensorProto.BOOL, ["N", 4])
    proto = model([helper.make_node("Dropout", ["x"], ["y", "m"])], [X2],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]), mask_out])
    check_pass(drop_identity, proto, RNG.normal(size=(2, 4)).astype(np.float32), expect_changed=False)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_strip_output_softmax_exposes_the_logits(op):
    proto = model([helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1), helper.make_node(op, ["logits"], ["y"], axis=1)],
                  [X2], [Y2], [init("W", (3, 4))])
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    logits = x @ numpy_helper.to_array(proto.graph.initializer[0]).T
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    assert strip_output_softmax(out)
    assert ops(out) == ["Gemm"] and out.graph.output[0].name == "logits"
    np.testing.assert_allclose(run(out, x)[0], logits, rtol=1e-5, atol=1e-6)


def test_fuse_matmul_add_into_gemm():
    proto = model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["b", "h"], ["y"])],
                  [X2], [Y2], [init("W", (4, 3)), init("b", (3,))])
    out = check_pass(fuse_matmul_add, proto, RNG.normal(size=(5, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"] and out.graph.node[0].output[0] == "y"


def test_fuse_matmul_add_leaves_a_shared_matmul_output():
    proto = model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
                   helper.make_node("Mul", ["h", "a"], ["y"])], [X2], [Y2], [init("W", (4, 3)), init("b", (3,))])
    check_pass(fuse_matmul_add, proto, RNG.normal(size=(5, 4)).astype(np.float32), expect_changed=False)


@pytest.mark.parametrize("attrs", [dict(transB=0), dict(transA=1, transB=1), dict(alpha=0.5, beta=2.0, transB=1),
                                   dict(alpha=2.0, beta=0.5)])
def test_normalize_gemm(attrs):
    weight_shape = (3, 4) if attrs.get("transB") else (4, 3)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, "N"]) if attrs.get("transA") else X2
    proto = model([helper.make_node("Gemm", ["x", "W", "C"], ["y"], **attrs)], [x_info], [Y2],
                  [init("W", weight_shape), init("C", (3,))])
    x = RNG.normal(size=(4, 5) if attrs.get("transA") else (5, 4)).astype(np.float32)
    out = check_pass(normalize_gemm, proto, x)
    gemm = [n for n in out.graph.node if n.op_type == "Gemm"][0]
    assert {a.name: helper.get_attribute_value(a) for a in gemm.attribute} == {"transB": 1}


def test_normalize_gemm_keeps_a_canonical_gemm():
    proto = model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [X2], [Y2], [init("W", (3, 4))])
    check_pass(normalize_gemm, proto, RNG.normal(size=(2, 4)).astype(np.float32), expect_changed=False)


def batchnorm_inits(channels, suffix=""):
    return [init("scale" + suffix, (channels,)), init("shift" + suffix, (channels,)), init("mean" + suffix, (channels,)),
            init("var" + suffix, (channels,), positive=True)]


def test_fold_batchnorm_into_conv():
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])
    proto = model([helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["y"], epsilon=1e-3)],
                  [X4], [y], [init("W", (3, 2, 3, 3)), init("B", (3,))] + batchnorm_inits(3))
    out = check_pass(fold_batchnorm, proto, RNG.normal(size=(2, 2, 6, 6)).astype(np.float32))
    assert ops(out) == ["Conv"]


def test_fold_batchnorm_into_a_gemm_without_bias():
    proto = model([helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
                   helper.make_node("BatchNormalization", ["g", "scale", "shift", "mean", "var"], ["y"])],
                  [X2], [Y2], [init("W", (3, 4))] + batchnorm_inits(3))
    out = check_pass(fold_batchnorm, proto, RNG.normal(size=(4, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"] and len(out.graph.node[0].input) == 3


def test_fold_batchnorm_refuses_a_shared_weight():
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])
    proto = model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["b"]),
                   helper.make_node("Conv", ["b", "W"], ["y"], pads=[1, 1, 1, 1])],
                  [X4], [y], [init("W", (2, 2, 3, 3))] + batchnorm_inits(2))
    out = check_pass(fold_batchnorm, proto, RNG.normal(size=(2, 2, 6, 6)).astype(np.float32), expect_changed=False)
    assert "BatchNormalization" in ops(out)


def test_fold_batchnorm_refuses_when_the_conv_output_is_used_elsewhere():
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])
    proto = model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["b"]),
                   helper.make_node("Add", ["b", "c"], ["y"])],
                  [X4], [y], [init("W", (2, 2, 3, 3))] + batchnorm_inits(2))
    check_pass(fold_batchnorm, proto, RNG.normal(size=(2, 2, 6, 6)).astype(np.float32), expect_changed=False)


def bn_then(layer, **attrs):
    """x -> BatchNormalization -> ``layer`` (a Gemm on (N, 4) or a Conv on (N, 2, 6, 6))."""
    if layer == "Gemm":
        return model([helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"], ["b"]),
                      helper.make_node("Gemm", ["b", "W", "B"], ["y"], transB=1)],
                     [X2], [Y2], [init("W", (3, 4)), init("B", (3,))] + batchnorm_inits(4))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, None, None])
    return model([helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"], ["b"], epsilon=1e-3),
                  helper.make_node("Conv", ["b", "W"], ["y"], **attrs)],
                 [X4], [y], [init("W", (3, 2, 3, 3))] + batchnorm_inits(2))


def test_fold_batchnorm_forward_into_a_gemm():
    out = check_pass(fold_batchnorm_forward, bn_then("Gemm"), RNG.normal(size=(4, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"] and out.graph.node[0].input[0] == "x"


def test_fold_batchnorm_forward_into_an_unpadded_conv():
    out = check_pass(fold_batchnorm_forward, bn_then("Conv", strides=[2, 2]), RNG.normal(size=(2, 2, 6, 6)).astype(np.float32))
    assert ops(out) == ["Conv"] and len(out.graph.node[0].input) == 3


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"auto_pad": "SAME_UPPER"}])
def test_fold_batchnorm_forward_refuses_a_padded_conv(attrs):
    """Zero padding of the normalized tensor is not zero padding of x: the fold would change
    the border outputs."""
    out = check_pass(fold_batchnorm_forward, bn_then("Conv", **attrs), RNG.normal(size=(2, 2, 6, 6)).astype(np.float32),
                     expect_changed=False)
    assert ops(out) == ["BatchNormalization", "Conv"]


def test_fold_batchnorm_forward_refuses_when_the_normalized_tensor_is_used_elsewhere():
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    proto = model([helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"], ["b"]),
                   helper.make_node("Gemm", ["b", "W"], ["g"], transB=1), helper.make_node("Add", ["g", "b"], ["y"])],
                  [X2], [y], [init("W", (4, 4))] + batchnorm_inits(4))
    check_pass(fold_batchnorm_forward, proto, RNG.normal(size=(3, 4)).astype(np.float32), expect_changed=False)


def test_all_passes_together_keep_the_logits():
    """The full pipeline on a model that needs every pass; the softmax is gone, so compare
    with the logits of the original."""
    weight = helper.make_tensor("wv", TensorProto.FLOAT, [4, 5], RNG.normal(size=20).astype(np.float32))
    proto = model(
        [helper.make_node("Constant", [], ["W"], value=weight),
         helper.make_node("BatchNormalization", ["x", "scale_in", "shift_in", "mean_in", "var_in"], ["x_bn"]),
         helper.make_node("Identity", ["x_bn"], ["i"]),
         helper.make_node("MatMul", ["i", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["g"]),
         helper.make_node("BatchNormalization", ["g", "scale", "shift", "mean", "var"], ["n"]),
         helper.make_node("Shape", ["n"], ["n_shape"]), helper.make_node("Gather", ["n_shape", "one"], ["width"]),
         helper.make_node("Unsqueeze", ["width", "zero"], ["width1"]),
         helper.make_node("Concat", ["minus_one", "width1"], ["target"], axis=0),
         helper.make_node("Reshape", ["n", "target"], ["n2"]),
         helper.make_node("Gemm", ["n2", "W2"], ["logits"], alpha=2.0),
         helper.make_node("Softmax", ["logits"], ["y"], axis=1)],
        [X2], [Y2], [init("b", (5,)), init("W2", (5, 3))] + batchnorm_inits(5) + batchnorm_inits(4, "_in") + [
            numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus_one")])
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    reference = onnx.ModelProto()
    reference.CopyFrom(proto)
    strip_output_softmax(reference)
    expected = run(reference, x)[0]
    changed = canonicalize(proto)
    # the transformer passes fuse patterns this model has not (tests/test_canonicalize_{layernorm,rmsnorm,gelu}.py)
    transformer = {"drop_noop_casts", "fuse_layernorm", "fuse_rmsnorm", "fuse_gelu_tanh"}
    # the deployed-format passes read int8, float16 and onnxruntime-fused models (tests/test_canonicalize_quantized.py)
    deployed = {"float16_to_float32", "unfuse_ort_contrib", "expand_qoperators", "fold_dequantize_constants", "qdq_to_clip"}
    # the exporter spellings: tf2onnx/jax2onnx forms (tests/test_canonicalize_{affine,transpose,activations}.py)
    spellings = {"cancel_transposes", "fuse_hardswish", "fuse_softmax", "fold_affine",
                 "normalize_groups",   # InstanceNorm/GroupNorm (tests/test_canonicalize_group_norm.py)
                 "global_pool_to_reduce_mean"}   # tf2onnx's LayerNorm mean (tests/test_canonicalize_global_pool.py)
    assert set(changed) == {p.__name__ for p in PASSES} - transformer - deployed - spellings
    assert ops(proto) == ["Gemm", "Reshape", "Gemm"]
    np.testing.assert_allclose(run(proto, x)[0], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def channel_shuffle(groups=2):
    """x (N, 4, 3, 3) -> view(n, groups, c // groups, h, w) -> transpose(1, 2) -> view(n, c, h, w),
    with the sizes read off Shape as torch.onnx writes them for a dynamic batch."""
    consts = {"i0": 0, "i1": 1, "i2": 2, "i3": 3, "g": groups}
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "axis0"), numpy_helper.from_array(np.array([groups], np.int64), "g1")]
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Shape", ["a"], ["s"])]
    for k in range(4):
        nodes.append(helper.make_node("Gather", ["s", f"i{k}"], [f"d{k}"]))
    nodes.append(helper.make_node("Div", ["d1", "g"], ["cg"]))
    for name in ("d0", "cg", "d1", "d2", "d3"):
        nodes.append(helper.make_node("Unsqueeze", [name, "axis0"], [name + "_1"]))
    nodes += [helper.make_node("Concat", ["d0_1", "g1", "cg_1", "d2_1", "d3_1"], ["shape5"], axis=0),
              helper.make_node("Reshape", ["a", "shape5"], ["r5"]),
              helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
              helper.make_node("Concat", ["d0_1", "d1_1", "d2_1", "d3_1"], ["shape4"], axis=0),
              helper.make_node("Reshape", ["t5", "shape4"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])
    return model(nodes, [x], [y], inits)


def test_fold_shape_arithmetic_makes_the_sizes_after_a_channel_shuffle_static():
    proto = channel_shuffle()
    shapes = {vi.name: vi for vi in proto.graph.value_info}
    assert not shapes["r5"].type.tensor_type.shape.dim[2].HasField("dim_value")   # hidden behind the Div
    out = check_pass(fold_shape_arithmetic, proto, RNG.normal(size=(2, 4, 3, 3)).astype(np.float32))
    infer_shapes(out)
    dims = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
            for vi in list(out.graph.value_info) + list(out.graph.output)}
    assert dims["r5"] == ["N", 2, 2, 3, 3] and dims["y"] == ["N", 4, 3, 3]
    assert "Div" not in ops(out) and ops(out).count("Shape") == 1   # the batch size is still read at run time


def test_fold_shape_arithmetic_leaves_a_model_without_shape_ops_alone():
    proto = model([helper.make_node("Relu", ["x"], ["y"])], [X2], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    check_pass(fold_shape_arithmetic, proto, RNG.normal(size=(2, 4)).astype(np.float32), expect_changed=False)


def test_check_pass_rejects_a_fold_that_drops_epsilon():
    """The tolerance of check_pass is not lax: a BatchNorm fold that ignores epsilon (0.1 here,
    against variances in [0.5, 3]: 2% to 10% of the output) is rejected; the right fold passes."""
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])
    proto = model([helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["y"], epsilon=0.1)],
                  [X4], [y], [init("W", (3, 2, 3, 3)), init("B", (3,))] + batchnorm_inits(3))
    x = RNG.normal(size=(2, 2, 6, 6)).astype(np.float32)
    check_pass(fold_batchnorm, proto, x)

    def fold_without_epsilon(m):
        for attribute in (a for n in m.graph.node if n.op_type == "BatchNormalization" for a in n.attribute):
            if attribute.name == "epsilon":
                attribute.f = 0.0
        return fold_batchnorm(m)

    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check_pass(fold_without_epsilon, proto, x)
