"""One walk finds every blocker (lrp_onnx/checks.py, compile.assess): compiling, `lrp-onnx
inspect` and lrp_onnx.coverage agree on each kind of model that cannot be explained, and a
model with hundreds of unsupported nodes gets one summary line per op type."""
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from handler_models import make_model
from lrp_onnx import Explainer
from lrp_onnx.cli import main
from lrp_onnx.coverage import blockers, op_coverage
from lrp_onnx.errors import LRPError, ModelError, UnsupportedOpError

RNG = np.random.default_rng(0)


def dense(first, extra_nodes=(), opset=17, x_shape=(4,)):
    """x -> <extra_nodes> -> Gemm -> y, the extra nodes reading x and writing ``first``."""
    nodes = list(extra_nodes) + [helper.make_node("Gemm", [first, "w"], ["y"], transB=1, name="fc")]
    model = make_model(nodes, x_shape, (3,), {"w": RNG.normal(size=(3, 4))}, opset=opset)
    model.opset_import.extend(helper.make_opsetid(d, 1) for d in sorted({n.domain for n in nodes} - {""}))
    return model


def float64_model():
    """float16/bfloat16 models are computed in float32 (canonicalize/float16.py); float64 is refused."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")], "double",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 3])],
        [numpy_helper.from_array(RNG.normal(size=(3, 4)).astype(np.float64), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def dynamic_model():
    """x (N, D) -> ReduceMean over D -> Gemm: the reduction's handler builds constants of D."""
    mean = helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1, name="mean")
    nodes = [mean, helper.make_node("Gemm", ["m", "w"], ["y"], transB=1, name="fc")]
    model = make_model(nodes, (4,), (3,), {"w": RNG.normal(size=(3, 1))})
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "D"
    return model


#: model, composite, what inspect and the error must say. The two-activation case is a Gemm
#: (its weight is the input itself): a handler's own refusal, found by the same walk.
CASES = {
    "float64": (float64_model, "epsilon_gamma_box", ModelError, r"element type DOUBLE; lrp_onnx explains float32 models"),
    # a dynamic size only stops a handler that builds constants of it: a ReduceMean's
    "dynamic": (dynamic_model, "epsilon_plus", ModelError, r"'x' needs static dimensions .*make_dynamic_shape_fixed"),
    "two activations": (lambda: make_model([helper.make_node("Gemm", ["x", "x"], ["y"], transB=1, name="square")], (4,), (4,), {}),
                        "epsilon_gamma_box", ModelError, r"node 'square' \(Gemm\) multiplies two activations"),
    "no gradient": (lambda: dense("m", [helper.make_node("Mish", ["x"], ["m"], name="mish")], opset=18), "gradient",
                    UnsupportedOpError, r"no gradient \(vector-Jacobian product\) in lrp_onnx: node 'mish' \(Mish\)"),
    "other domain": (lambda: dense("c", [helper.make_node("Relu", ["x"], ["c"], name="fused", domain="com.microsoft.nchwc")]),
                     "epsilon_gamma_box", UnsupportedOpError, r"node 'fused' \(com\.microsoft\.nchwc:Relu\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiling_inspect_and_coverage_agree(case, tmp_path, capsys):
    build, composite, error, message = CASES[case]
    model = build()
    with pytest.raises(error, match=message):
        Explainer(model, composite)
    found = blockers(model, composite)
    assert found and any(re.search(message, b.line()) for b in found)
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["inspect", str(path), "--composite", composite]) == 1
    out = capsys.readouterr().out
    assert f"the model cannot be explained with {composite!r}:" in out
    assert re.search(message, out)


def test_a_node_of_another_domain_is_not_taken_by_the_onnx_handler():
    """com.microsoft.nchwc:Conv is onnxruntime's blocked-layout Conv, not ONNX's."""
    model = dense("c", [helper.make_node("Relu", ["x"], ["c"], name="fused", domain="com.microsoft.nchwc")])
    rows = {row.op_type: row for row in op_coverage(model)}
    assert rows["com.microsoft.nchwc:Relu"].blocking and not rows["com.microsoft.nchwc:Relu"].handled
    assert "Relu" not in rows
    with pytest.raises(UnsupportedOpError, match="of domain 'com.microsoft.nchwc', which has no relevance handler"):
        from lrp_onnx.ops import handler_for
        handler_for(model.graph.node[0])


def test_a_model_explainable_with_lrp_is_clear_everywhere(tmp_path, capsys):
    model = dense("m", [helper.make_node("Mish", ["x"], ["m"], name="mish")], opset=18)
    assert blockers(model, "epsilon_plus") == []
    assert not any(row.blocking for row in op_coverage(model, "epsilon_plus"))
    path = tmp_path / "mish.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["inspect", str(path), "--composite", "epsilon_plus"]) == 0
    assert "cannot be explained" not in capsys.readouterr().out


def test_hundreds_of_unsupported_nodes_are_summarized_by_op_type(tmp_path, capsys):
    chain = [helper.make_node("Cos" if i % 2 else "Sin", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(300)]
    chain[0].input[0] = "x"
    model = dense("t300", chain)
    with pytest.raises(UnsupportedOpError) as err:
        Explainer(model)
    lines = str(err.value).splitlines()
    assert lines[0] == "lrp_onnx cannot explain this model (2 problems):"
    assert lines[1].startswith("  - no relevance handler in lrp_onnx: 150 Sin nodes ('n0', 'n2', 'n4' and 147 more);")
    assert lines[3].startswith("supported ops: ") and len(lines) == 4
    assert max(len(line) for line in lines[:3]) < 200
    path = tmp_path / "many.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["inspect", str(path)]) == 1
    summary = capsys.readouterr().out.split("cannot be explained with 'epsilon_gamma_box':\n")[1].splitlines()
    assert len(summary) == 2 and "150 Cos nodes ('n1', 'n3', 'n5' and 147 more)" in summary[1]


def test_mixed_problems_raise_their_common_error_class():
    model = float64_model()
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(LRPError) as err:
        Explainer(model)
    assert type(err.value) is ModelError and "(3 problems)" in str(err.value)


def test_an_unfolded_onnxruntime_fusion_is_reported_once_with_its_hint():
    """A com.microsoft op on the relevance path is one blocker (per node, with the hint for
    onnxruntime fusions); the model-wide check names only such ops off that path."""
    on_path = helper.make_node("QuickGelu", ["x"], ["g"], name="quick", domain="com.microsoft")
    model = dense("g", [on_path])
    lines = [b.line() for b in blockers(model)]
    assert len(lines) == 1 and "node 'quick' (com.microsoft:QuickGelu)" in lines[0]
    assert "ORT_ENABLE_BASIC" in lines[0]
    off_path = helper.make_node("QuickGelu", ["x"], ["unused"], name="side", domain="com.microsoft")
    model = dense("x", [off_path])
    model.graph.output.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, ["N", 4]))
    lines = [b.line() for b in blockers(model)]
    assert len(lines) == 1 and lines[0].startswith("onnxruntime fusions that lrp_onnx does not undo remain (QuickGelu)")
