"""scikit-learn's MLPClassifier (hidden activations relu, tanh, logistic, identity) to an ONNX
model whose output is the logits, via skl2onnx (``pip install 'lrp_onnx[sklearn]'``).

skl2onnx converts the classifier (zipmap=False) into MatMul + Add + activation per layer, then
the output activation (Softmax, or Sigmoid for one output unit) and the label/probability
outputs. LRP explains a score, not a probability, so the graph is cut at the input of that
output activation (its ancestors only), and a Cast of the float input to float, which
changes nothing, is removed. The result is checked against the classifier itself: softmax (or
sigmoid) of the ONNX logits must equal ``predict_proba`` (float64) on seeded random inputs
within the float32 envelope of exporters/check.py: K = 4 times the error of the same MLP run
in float32 with numpy, plus the roundoff floor.

Output "logits": (N, classes) for several classes, predicted class ``classes_[argmax]``;
(N, 1) for a binary classifier: the log-odds of ``classes_[1]``, predicted class
``classes_[int(logit > 0)]``. With lrp_onnx the default target explains the log-odds (evidence
for classes_[1]); a target mask of -1 explains -log-odds (evidence for classes_[0]).
"""
from __future__ import annotations

import numpy as np
import onnx

from . import ExportError

OPSET = 17
OUTPUT_ACTIVATIONS = {"softmax": "Softmax", "logistic": "Sigmoid"}
HIDDEN_ACTIVATIONS = ("relu", "tanh", "logistic", "identity")


def _check(model):
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        raise ExportError("exporting scikit-learn models needs scikit-learn and skl2onnx: pip install 'lrp_onnx[sklearn]'") from None
    if not isinstance(model, MLPClassifier):
        raise ExportError(f"expected a fitted sklearn.neural_network.MLPClassifier, got {type(model).__name__}")
    if not hasattr(model, "coefs_"):
        raise ExportError("the MLPClassifier is not fitted (call fit first)")
    if model.activation not in HIDDEN_ACTIVATIONS:
        raise ExportError(f"hidden activation {model.activation!r} is not supported; use one of {', '.join(HIDDEN_ACTIVATIONS)}")
    if model.out_activation_ not in OUTPUT_ACTIVATIONS or (model.out_activation_ == "logistic" and model.n_outputs_ > 1):
        raise ExportError(f"output activation {model.out_activation_!r} with {model.n_outputs_} outputs (multi-label) "
                          "is not supported; export single-label classifiers")


def _ancestors(graph: onnx.GraphProto, tensor: str) -> list:
    """The nodes that ``tensor`` depends on, in graph (topological) order."""
    producers = {o: n for n in graph.node for o in n.output}
    found, todo = set(), [tensor]
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in found:
            found.add(id(node))
            todo += list(node.input)
    return [n for n in graph.node if id(n) in found]


def _cut_at_logits(full: onnx.ModelProto, out_op: str, classes: int) -> onnx.ModelProto:
    """The subgraph from "input" to the input of the last ``out_op`` node that feeds the
    "probabilities" output, that tensor renamed "logits", a Cast of the input to float dropped."""
    heads = [n for n in _ancestors(full.graph, "probabilities") if n.op_type == out_op]
    if not heads:
        raise ExportError(f"skl2onnx's graph has no {out_op} node before 'probabilities'; cannot cut it at the logits")
    logits = heads[-1].input[0]
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in _ancestors(full.graph, logits)]
    renamed = {logits: "logits"}
    for node in [n for n in nodes if n.op_type == "Cast" and list(n.input) == ["input"]]:
        if {a.name: a.i for a in node.attribute}.get("to") == onnx.TensorProto.FLOAT:
            renamed[node.output[0]] = "input"
            nodes.remove(node)
    for node in nodes:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    used = {name for n in nodes for name in n.input}
    graph = onnx.helper.make_graph(
        nodes, full.graph.name, [full.graph.input[0]],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes])],
        [t for t in full.graph.initializer if t.name in used])
    return onnx.helper.make_model(graph, opset_imports=[o for o in full.opset_import if o.domain in ("", "ai.onnx")],
                                  producer_name="exporters.scikit_learn")


def mlp_to_onnx(model, opset: int = OPSET, check_samples: int = 64) -> onnx.ModelProto:
    """The fitted MLPClassifier ``model`` as an ONNX model: input "input" float32
    (N, n_features_in_), output "logits". Checked on ``check_samples`` seeded standard-normal
    inputs: max|softmax(logits) - predict_proba| <= K * max|p32 - predict_proba| + floor, with
    p32 the probabilities of the same MLP computed in float32 by numpy (an independent float32
    implementation: its error measures float32 rounding on this model) and floor =
    8 * 2^-24 * sqrt(layers) (probabilities have scale 1; exporters/check.py)."""
    _check(model)
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError:
        raise ExportError("exporting scikit-learn models needs skl2onnx: pip install 'lrp_onnx[sklearn]'") from None
    full = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, model.n_features_in_]))],
                           options={id(model): {"zipmap": False}}, target_opset=opset)
    cut = _cut_at_logits(full, OUTPUT_ACTIVATIONS[model.out_activation_], model.n_outputs_)
    onnx.checker.check_model(cut)
    _verify(cut, model, check_samples)
    return cut


_ACTIVATIONS = {"relu": lambda h: np.maximum(h, 0), "tanh": np.tanh, "identity": lambda h: h,
                "logistic": lambda h: 1 / (1 + np.exp(-h))}


def _logits_float32(model, x):
    """The MLP's logits computed in float32 by numpy (weights rounded to float32)."""
    h = x.astype(np.float32)
    layers = list(zip(model.coefs_, model.intercepts_))
    for i, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float32) + b.astype(np.float32)
        if i < len(layers) - 1:
            h = _ACTIVATIONS[model.activation](h).astype(np.float32)
    return h


def _probabilities(model, logits):
    logits = np.asarray(logits, np.float64)
    if model.out_activation_ == "logistic":
        p1 = 1 / (1 + np.exp(-logits[:, 0]))
        return np.stack([1 - p1, p1], axis=1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _verify(onnx_model, model, samples: int):
    import onnxruntime as ort

    from .check import float32_tolerance

    x = np.random.default_rng(0).normal(size=(samples, model.n_features_in_)).astype(np.float32)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities = _probabilities(model, session.run(None, {"input": x})[0])
    expected = model.predict_proba(x.astype(np.float64))
    tolerance = float32_tolerance(_probabilities(model, _logits_float32(model, x)), expected, len(model.coefs_), scale=1.0)
    error = float(np.abs(probabilities - expected).max())
    if not error <= tolerance:
        raise ExportError(f"the exported logits do not reproduce predict_proba (max difference {error:.3g}, "
                          f"float32 tolerance {tolerance:.3g}); skl2onnx's graph may have changed")


def predicted_classes(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The classes the classifier predicts from the exported logits (see the module docstring)."""
    index = (logits[:, 0] > 0).astype(int) if logits.shape[1] == 1 else logits.argmax(1)
    return np.asarray(classes)[index]


def export_mlp(model, path, opset: int = OPSET) -> onnx.ModelProto:
    """``mlp_to_onnx`` written atomically to ``path``."""
    from lrp_onnx.files import write_atomically

    onnx_model = mlp_to_onnx(model, opset)
    write_atomically(path, lambda tmp: onnx.save(onnx_model, tmp))
    return onnx_model
