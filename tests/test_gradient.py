"""The gradient methods ("gradient", "gradient_x_input") compiled into the explainer graph,
against independent gradients: numpy backprop on models/digits_mlp.onnx (no torch, no
../shared), torch.autograd on VGG-16 and ResNet-18 (seeded weights) and on one tiny graph per
activation/arithmetic VJP.

Tolerances are relative to the scale of the reference: on the tiny graphs and the MLP
max |got - ref| <= 1e-5 * max |ref| against float64 references (depth <= 3, fan-in <= 784:
a random walk of 3 * sqrt(784) roundings of 2^-24 is 5e-6 of sum|terms|; observed ~1e-7).
On the deep CNNs a few ReLUs whose input is within rounding of 0 switch differently in float32
and float64, and each switch moves the gradient of the pixels below it: the gradient is
ill-conditioned there, in ANY float32 implementation. So the check is the float32 envelope of
tests/tolerances.py, measured: against torch.autograd in float64 (a deep copy of the module),
within K = 4 times torch's own float32 gradient's error, in the relative L2 norm and in the max
norm (the switches dominate both; torch's own float32 gradient on VGG-16 is 2e-2 of the
scale off the float64 one at the max). Observed error / tolerance on an AMD EPYC (AVX2, 2 cores;
pytest -s tests/test_gradient.py -k "vgg16 or resnet18"): VGG-16 0.25 (max) and 0.26 (L2),
both methods (onnxruntime switches the same ReLUs as torch's float32: 2e-2 of the scale off
float64 at the max, as torch), ResNet-18 0.09 and 0.03. A ReLU dropped from the reference is
rejected (test_the_tolerance_rejects_a_dropped_relu: 1.3e5)."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from tolerances import l2_envelope_ratio, module_depth, within_envelope
from lrp_onnx.composites import Composite, Family
from lrp_onnx.errors import CompositeError, UnsupportedOpError
from lrp_onnx.rules import Epsilon, Gradient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_MLP = os.path.join(ROOT, "models", "digits_mlp.onnx")


def rel_err(got, ref):
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


def mlp_gradient(path, x, target):
    """d logit[target] / dx by numpy backprop (float64) through the Gemm-Relu MLP in ``path``."""
    model = onnx.load(path)
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    acts, h = [], x.astype(np.float64)
    for i, node in enumerate(gemms):
        transb = {a.name: a.i for a in node.attribute}.get("transB", 0)
        w = params[node.input[1]]
        w = w.T if transb else w
        h = h @ w + params[node.input[2]]
        acts.append((w, h))
        if i < len(gemms) - 1:
            h = np.maximum(h, 0)
    g = np.zeros_like(h)
    g[np.arange(len(x)), target] = 1.0
    for i in reversed(range(len(gemms))):
        w, z = acts[i]
        if i < len(gemms) - 1:
            g = g * (z > 0)
        g = g @ w.T
    return g


def test_digits_mlp_gradient_matches_numpy_backprop():
    """models/digits_mlp.onnx (784-300-100-10 ReLU MLP): both methods equal numpy backprop
    within 1e-5 of max |ref| (measured: ~1e-7)."""
    from exporters.digits import digits_28x28

    x = digits_28x28()[0][:16].astype(np.float32)
    target = np.arange(16) % 10
    ref = mlp_gradient(DIGITS_MLP, x, target)
    grad = lrp_onnx.Explainer(DIGITS_MLP, "gradient").explain(x, target=target).relevance
    gxi = lrp_onnx.Explainer(DIGITS_MLP, "gradient_x_input").explain(x, target=target).relevance
    assert rel_err(grad, ref) < 1e-5
    assert rel_err(gxi, ref * x) < 1e-5


def test_gradient_of_predicted_class_and_masks():
    """target=None is the predicted class; a mask m gives the gradient of sum(m * logits)."""
    x = np.random.default_rng(1).uniform(-1, 1, (6, 784)).astype(np.float32)
    ex = lrp_onnx.Explainer(DIGITS_MLP, "gradient")
    res = ex.explain(x)
    assert rel_err(res.relevance, mlp_gradient(DIGITS_MLP, x, res.output.argmax(1))) < 1e-5
    mask = np.random.default_rng(2).normal(size=(6, 10)).astype(np.float32)
    ref = sum(mask[:, k:k + 1] * mlp_gradient(DIGITS_MLP, x, np.full(6, k)) for k in range(10))
    assert rel_err(ex.explain(x, target=mask).relevance, ref) < 1e-5


def test_gradient_is_a_preset_and_a_json_method():
    x = np.random.default_rng(3).uniform(-1, 1, (2, 784)).astype(np.float32)
    by_name = lrp_onnx.Explainer(DIGITS_MLP, "gradient_x_input").explain(x, target=1).relevance
    by_json = lrp_onnx.Explainer(DIGITS_MLP, {"preset": "gradient_x_input"}).explain(x, target=1).relevance
    custom = {"method": "gradient", "rules": [{"where": "all", "rule": {"rule": "Gradient"}}]}
    grad = lrp_onnx.Explainer(DIGITS_MLP, custom).explain(x, target=1).relevance
    np.testing.assert_array_equal(by_name, by_json)
    np.testing.assert_allclose(by_name, grad * x, rtol=1e-6, atol=1e-9)


def test_gradient_rule_and_lrp_rules_do_not_mix():
    with pytest.raises(CompositeError, match="Gradient rule goes with the methods"):
        lrp_onnx.Explainer(DIGITS_MLP, Composite(((Family("all"), Gradient()),)))
    with pytest.raises(CompositeError, match="Gradient rule goes with the methods"):
        lrp_onnx.Explainer(DIGITS_MLP, Composite(((Family("all"), Epsilon()),), method="gradient"))
    with pytest.raises(CompositeError, match="winner-take-all"):
        lrp_onnx.Explainer(DIGITS_MLP, "gradient", maxpool="avg")
    with pytest.raises(CompositeError, match="method must be one of"):
        Composite(((Family("all"), Gradient()),), method="saliency")


def _tiny(op, attrs=None, extra_inputs=(), inits=(), second=None, opset=17):
    """x (N, 6) -> Gemm -> [op] -> Gemm -> (N, 4); ``second``: a node built on the op's output
    instead of a plain activation (for Mul/Div/Add of two activations)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 6)).astype(np.float32)
    w2 = rng.normal(size=(6, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="g1")]
    if second is None:
        nodes.append(helper.make_node(op, ["h", *extra_inputs], ["a"], name="act", **(attrs or {})))
    else:
        nodes += second
    nodes.append(helper.make_node("Gemm", ["a", "w2"], ["y"], name="g2"))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), *inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), w1, w2


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _cases():
    import torch.nn.functional as F

    torch = pytest.importorskip("torch")
    slope = np.linspace(-0.3, 0.4, 6).astype(np.float32)
    scale = np.linspace(0.5, 2.0, 6).astype(np.float32)
    return {
        "Relu": (dict(op="Relu"), F.relu),
        "LeakyRelu": (dict(op="LeakyRelu", attrs={"alpha": 0.2}), lambda h: F.leaky_relu(h, 0.2)),
        "PRelu": (dict(op="PRelu", extra_inputs=["slope"], inits=[_c("slope", slope)]),
                  lambda h: F.prelu(h, torch.tensor(slope, dtype=torch.float64))),
        "Elu": (dict(op="Elu", attrs={"alpha": 0.7}), lambda h: F.elu(h, 0.7)),
        "Sigmoid": (dict(op="Sigmoid"), torch.sigmoid),
        "HardSigmoid": (dict(op="HardSigmoid", attrs={"alpha": 1 / 6, "beta": 0.5}), F.hardsigmoid),
        "Tanh": (dict(op="Tanh"), torch.tanh),
        "Softplus": (dict(op="Softplus"), F.softplus),
        "Clip": (dict(op="Clip", extra_inputs=["lo", "hi"], inits=[_c("lo", -0.5), _c("hi", 1.0)]),
                 lambda h: torch.clamp(h, -0.5, 1.0)),
        "Erf": (dict(op="Erf"), torch.erf),
        "Gelu": (dict(op="Gelu", opset=20), F.gelu),
        "HardSwish": (dict(op="HardSwish"), F.hardswish),
        "Mul_const": (dict(op="Mul", extra_inputs=["scale"], inits=[_c("scale", scale)]), lambda h: h * torch.tensor(scale, dtype=torch.float64)),
        "Div_const": (dict(op="Div", extra_inputs=["scale"], inits=[_c("scale", scale)]), lambda h: h / torch.tensor(scale, dtype=torch.float64)),
        "Sub_bias": (dict(op="Sub", extra_inputs=["scale"], inits=[_c("scale", scale)]), lambda h: h - torch.tensor(scale, dtype=torch.float64)),
        "SiLU": (dict(op=None, second=[helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["h", "s"], ["a"])]),
                 F.silu),
        "Mul_two": (dict(op=None, second=[helper.make_node("Tanh", ["h"], ["t"]), helper.make_node("Relu", ["h"], ["r"]),
                                          helper.make_node("Mul", ["t", "r"], ["a"])]), lambda h: torch.tanh(h) * F.relu(h)),
        "Div_two": (dict(op=None, second=[helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Add", ["s", "one"], ["d"]),
                                          helper.make_node("Div", ["h", "d"], ["a"])], inits=[_c("one", 1.0)]),
                    lambda h: h / (torch.sigmoid(h) + 1)),
        "Sub_Sum_broadcast": (dict(op=None, second=[
            helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=1), helper.make_node("Sub", ["h", "m"], ["c"]),
            helper.make_node("Sum", ["c", "h", "h"], ["a"])]), lambda h: (h - h.mean(1, keepdim=True)) + 2 * h),
    }


CASES = ["Relu", "LeakyRelu", "PRelu", "Elu", "Sigmoid", "HardSigmoid", "Tanh", "Softplus", "Clip", "Erf", "Gelu",
         "HardSwish", "Mul_const", "Div_const", "Sub_bias", "SiLU", "Mul_two", "Div_two", "Sub_Sum_broadcast"]


@pytest.mark.parametrize("case", CASES)
def test_vjp_matches_autograd(case):
    """Each VJP of ops/gradient.py on x -> Gemm -> op(s) -> Gemm, against torch.autograd in
    float64 (tol 1e-5 of max |ref|)."""
    torch = pytest.importorskip("torch", reason="autograd oracle needs the torch extra")
    spec, fn = _cases()[case]
    model, w1, w2 = _tiny(**spec)
    x = np.random.default_rng(5).normal(scale=2.0, size=(32, 6)).astype(np.float32)
    target = np.arange(32) % 4
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = fn(xt @ torch.tensor(w1, dtype=torch.float64)) @ torch.tensor(w2, dtype=torch.float64)
    out[torch.arange(32), torch.tensor(target)].sum().backward()
    got = lrp_onnx.Explainer(model, "gradient").explain(x, target=target)
    np.testing.assert_allclose(got.output, out.detach().numpy(), rtol=1e-4, atol=1e-4)
    assert rel_err(got.relevance, xt.grad.numpy()) < 1e-5


def test_op_without_vjp_is_an_error():
    """Softsign passes relevance (an activation) but has no VJP here: compiling the gradient
    names it instead of passing G through."""
    model, _, _ = _tiny("Softsign")
    lrp_onnx.Explainer(model, "epsilon_plus")   # LRP is fine
    with pytest.raises(UnsupportedOpError, match=r"no gradient .*'act' \(Softsign\)"):
        lrp_onnx.Explainer(model, "gradient")


def _torch_gradient(torch, module, x, target, times_input=False, dtype=None):
    """torch.autograd's d logit[target] / dx (times x), in float32 or ``dtype`` (float64: on a
    deep copy of the module)."""
    import copy

    if dtype is not None:
        module = copy.deepcopy(module).to(dtype)
    xt = torch.tensor(x, dtype=dtype or torch.float32, requires_grad=True)
    out = module(xt)
    out[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    g = xt.grad.numpy()
    return g * x if times_input else g


def assert_gradient_within_envelope(got, ref32, ref64, depth, label):
    """The deep CNNs' check (module doc): L2 and max norms within the float32 envelope."""
    l2 = l2_envelope_ratio(got, ref32, ref64, depth)
    print(f"  (L2 error / tolerance = {l2:.3g})")
    assert within_envelope(got, ref32, ref64, depth, label) <= 1 and l2 <= 1


@pytest.fixture(scope="module")
def vgg16_gradients(vgg16, vgg16_input):
    """torch.autograd's VGG-16 gradients for targets [3, 417]: (float32, float64), computed once."""
    torch = pytest.importorskip("torch")
    module, _ = vgg16
    target = np.array([3, 417])
    return target, _torch_gradient(torch, module, vgg16_input, target), \
        _torch_gradient(torch, module, vgg16_input, target, dtype=torch.float64)


@pytest.mark.parametrize("method", ["gradient", "gradient_x_input"])
def test_vgg16_gradient_matches_autograd(vgg16, vgg16_input, vgg16_gradients, method):
    """torchvision VGG-16 (seeded weights): the compiled gradient against torch.autograd in
    float64 within the float32 envelope (module doc)."""
    module, path = vgg16
    target, ref32, ref64 = vgg16_gradients
    if method == "gradient_x_input":
        ref32, ref64 = ref32 * vgg16_input, ref64 * vgg16_input.astype(np.float64)
    got = lrp_onnx.Explainer(path, method).explain(vgg16_input, target=target).relevance
    assert_gradient_within_envelope(got, ref32, ref64, module_depth(module), f"vgg16 {method}")


def test_resnet18_gradient_matches_autograd(zoo_export):
    """ResNet-18 (BatchNorm folded into the convs, residual Adds, MaxPool, GlobalAveragePool):
    torch.autograd's gradient within the CNN tolerances of the module doc."""
    import torch

    module, path = zoo_export("resnet18")
    ex = lrp_onnx.Explainer(path, "gradient")
    shape = [d if isinstance(d, int) else 2 for d in ex._session(False)[0].get_inputs()[0].shape]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    target = np.array([1, 7])
    ref32 = _torch_gradient(torch, module, x, target)
    ref64 = _torch_gradient(torch, module, x, target, dtype=torch.float64)
    got = ex.explain(x, target=target).relevance
    assert_gradient_within_envelope(got, ref32, ref64, module_depth(module), "resnet18 gradient")


def test_the_tolerance_rejects_a_dropped_relu(zoo_export):
    """The envelope is not lax: ResNet-18's gradient against the float64 gradient of the same
    network with its last block's ReLU dropped (layer4[1].relu -> Identity) fails it."""
    import copy

    import torch

    module, path = zoo_export("resnet18")
    ex = lrp_onnx.Explainer(path, "gradient")
    shape = [d if isinstance(d, int) else 2 for d in ex._session(False)[0].get_inputs()[0].shape]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    target = np.array([1, 7])
    wrong = copy.deepcopy(module)
    wrong.layer4[1].relu = torch.nn.Identity()
    # the envelope: the wrong function's own float32 error (not the difference under test)
    wrong32 = _torch_gradient(torch, wrong, x, target)
    wrong64 = _torch_gradient(torch, wrong, x, target, dtype=torch.float64)
    got = ex.explain(x, target=target).relevance
    ratio = within_envelope(got, wrong32, wrong64, module_depth(module), "resnet18 against a dropped ReLU")
    assert ratio > 1 or l2_envelope_ratio(got, wrong32, wrong64, module_depth(module)) > 1
