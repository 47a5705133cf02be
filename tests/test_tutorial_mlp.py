"""The ``tutorial_mlp`` composite against an independent numpy re-implementation of the LRP
tutorial's MLP procedure (Montavon et al., "Layer-wise Relevance Propagation: An Overview",
2019, and its tutorial code, section "LRP for a deep rectifier network on MNIST").

The network is the tutorial's 784-300-100-10 ReLU network (ReLU after every layer, the top one
included), inputs in [-1, 1], here with seeded random weights. The ONNX model is written as
MatMul + Add + Relu per layer, so the engine's MatMul+Add -> Gemm fusion is exercised too.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx

SIZES = (784, 300, 100, 10)
L = len(SIZES) - 1                 # 3 linear layers, indices 0, 1, 2 as in the tutorial
N_SAMPLES = 12
ACTS = ("a1", "a2")                # the Relu outputs: R[1] lives on a1, R[2] on a2

# Float32 engine vs float64 oracle, a shallow graph (tests/tolerances.py: an a-priori bound
# suffices): depth 3, fan-in <= 784, each relevance a sum of 784 / 300 / 100 float32 products
# divided by float32 denominators: a random walk of 3 * sqrt(784) roundings of 2^-24 is 5e-6
# of sum|terms|, and the relevance sums cancel by less than 10x here, so errors of ~1e-6..5e-5
# of max|R| are expected; 1e-4 of max|ref| still catches any rule difference (gamma 0.1 vs
# 0.12 on layer 1 is rejected: test_the_tolerance_rejects_a_wrong_gamma; epsilon 0.1*rms vs 0,
# a bias in z^B change the maps by percents).
RTOL = 1e-4
ATOL_REL = 1e-4


def make_params(seed=0, zero_bias=False):
    """He-scaled normal weights W[l] of shape (in, out) and small normal biases, float32."""
    rng = np.random.default_rng(seed)
    W, B = [], []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        W.append((rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32))
        b = rng.standard_normal(n_out) * 0.01
        B.append((np.zeros(n_out) if zero_bias else b).astype(np.float32))
    return W, B


def make_model(W, B):
    """784-300-100-10 as MatMul + Add(bias) + Relu per layer, opset 17, input "x" (N, 784),
    output "y" = relu(logits) (N, 10); the Relu outputs are named a1, a2, y."""
    nodes, inits = [], []
    prev = "x"
    for l in range(L):
        out = ACTS[l] if l < L - 1 else "y"
        inits += [numpy_helper.from_array(W[l], f"W{l}"), numpy_helper.from_array(B[l], f"B{l}")]
        nodes += [
            helper.make_node("MatMul", [prev, f"W{l}"], [f"mm{l}"], name=f"matmul{l}"),
            helper.make_node("Add", [f"mm{l}", f"B{l}"], [f"z{l}"], name=f"add{l}"),
            helper.make_node("Relu", [f"z{l}"], [out], name=f"relu{l}"),
        ]
        prev = out
    graph = helper.make_graph(
        nodes, "tutorial_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SIZES[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SIZES[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def make_inputs(seed=1):
    """12 inputs uniform in [-1, 1], the tutorial's input box."""
    return np.random.default_rng(seed).uniform(-1, 1, (N_SAMPLES, SIZES[0])).astype(np.float32)


def tutorial_lrp(x, W, B, target, gamma=0.1):
    """The tutorial's MLP procedure for ONE sample x (784,), in float64; returns ([R0, R1, R2], A[L]).

    Run per sample on purpose: the tutorial's epsilon on layer 2 is 0.1 * rms(z) with the rms
    ("std") taken over the whole batch, while the engine takes it per sample (so that an
    explanation does not depend on its batch mates). One sample per call makes them the same.
    """
    W = [w.astype(np.float64) for w in W]
    B = [b.astype(np.float64) for b in B]
    A = [x.astype(np.float64)]
    for l in range(L):
        A.append(np.maximum(0, A[l] @ W[l] + B[l]))

    def rho(w, l):
        return w + [None, gamma, 0.0][l] * np.maximum(0, w)

    def incr(z, l):
        return z + [None, 0.0, 0.1][l] * (z ** 2).mean() ** .5 + 1e-9

    R = [None] * L + [A[L] * np.eye(SIZES[-1])[target]]
    for l in (2, 1):
        w, b = rho(W[l], l), rho(B[l], l)
        z = incr(A[l] @ w + b, l)
        s = R[l + 1] / z
        c = s @ w.T
        R[l] = A[l] * c
    # input layer: z^B with l = -1, h = 1, no bias
    w = W[0]
    wp, wm = np.maximum(0, w), np.minimum(0, w)
    lb, hb = -np.ones_like(A[0]), np.ones_like(A[0])
    z = A[0] @ w - lb @ wp - hb @ wm + 1e-9
    s = R[1] / z
    R[0] = A[0] * (s @ w.T) - lb * (s @ wp.T) - hb * (s @ wm.T)
    return R[:L], A[L]


def max_rel_err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def setup():
    W, B = make_params(seed=0)
    return W, B, make_model(W, B), make_inputs(seed=1)


def test_model_is_fused_and_layers_named(setup):
    """MatMul + Add became Gemm (the fusion pass ran), the three linear layers got the
    tutorial's rules in order, and the relevance can be requested at x, a1 and a2."""
    _, _, model, _ = setup
    ex = lrp_onnx.Explainer(model, composite="tutorial_mlp")
    assert "fuse_matmul_add" in ex.compiled.passes
    ops = {n.op_type for n in ex.model.graph.node}
    assert "Gemm" in ops and "MatMul" not in ops
    assert [type(r).__name__ for r in ex.rules.values()] == ["ZBox", "Gamma", "Epsilon"]
    names = ex.layer_names
    assert names[0] == "x"
    assert names.index("a1") < names.index("a2")


def test_tutorial_mlp_matches_numpy_oracle_at_every_layer(setup):
    """R[0], R[1], R[2] of the engine equal the tutorial's numpy procedure (run per sample)
    for 12 inputs: z^B (no bias) at the input, gamma = 0.1 on layer 1, epsilon = 0.1*rms(z)
    on layer 2, relevance at the top = relu(logits) * one-hot(target)."""
    W, B, model, x = setup
    ex = lrp_onnx.Explainer(model, composite="tutorial_mlp")

    outputs = [tutorial_lrp(x[i], W, B, 0)[1] for i in range(N_SAMPLES)]
    predicted = np.array([int(np.argmax(o)) for o in outputs])
    # Explained classes: the predicted class for the first half, a fixed rotating class for
    # the rest wherever that output is positive (else the predicted class: a class whose
    # output is 0 has all-zero relevance under the top ReLU, which would compare nothing).
    target = predicted.copy()
    for i in range(N_SAMPLES // 2, N_SAMPLES):
        if outputs[i][i % 10] > 0:
            target[i] = i % 10
    assert all(outputs[i][target[i]] > 0 for i in range(N_SAMPLES))

    res = ex.explain(x, target=target, layers=ACTS)
    assert res.relevance.shape == x.shape
    np.testing.assert_array_equal(res.target, target)
    # logits: 3 float32 layers, fan-in <= 784, no division: 3 * sqrt(784) * 2^-24 = 5e-6 of the scale
    np.testing.assert_allclose(res.output, np.stack(outputs), rtol=1e-5, atol=1e-5 * np.abs(outputs).max())

    worst = _compare(res, x, W, B, target)
    print("\nmax |engine - oracle| / max|oracle| per layer R[0], R[1], R[2]:", worst)


def _targets(x, W, B):
    outputs = [tutorial_lrp(x[i], W, B, 0)[1] for i in range(N_SAMPLES)]
    return np.array([int(np.argmax(o)) for o in outputs])


def _compare(res, x, W, B, target, gamma=0.1):
    """Every sample and layer within RTOL / ATOL_REL of the oracle (run with ``gamma``)."""
    worst = [0.0] * L
    for i in range(N_SAMPLES):
        ref, _ = tutorial_lrp(x[i], W, B, target[i], gamma)
        got = [res.relevance[i], res.layers["a1"][i], res.layers["a2"][i]]
        for l in range(L):
            assert np.abs(ref[l]).max() > 0, f"sample {i} layer {l}: reference relevance is all zero"
            np.testing.assert_allclose(got[l], ref[l], rtol=RTOL, atol=ATOL_REL * np.abs(ref[l]).max(),
                                       err_msg=f"sample {i}, R[{l}]")
            worst[l] = max(worst[l], max_rel_err(got[l], ref[l]))
    return worst


def test_the_tolerance_rejects_a_wrong_gamma(setup):
    """The oracle with gamma 0.12 instead of 0.1 on layer 1, a small but real change: the
    comparison at RTOL / ATOL_REL fails."""
    W, B, model, x = setup
    target = _targets(x, W, B)
    res = lrp_onnx.Explainer(model, composite="tutorial_mlp").explain(x, target=target, layers=ACTS)
    _compare(res, x, W, B, target)   # the right oracle passes
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _compare(res, x, W, B, target, gamma=0.12)


def test_target_none_is_predicted_class(setup):
    """target=None explains the predicted class (the tutorial's default use)."""
    W, B, model, x = setup
    ex = lrp_onnx.Explainer(model, composite="tutorial_mlp")
    res = ex.explain(x)
    predicted = np.array([int(np.argmax(tutorial_lrp(x[i], W, B, 0)[1])) for i in range(N_SAMPLES)])
    np.testing.assert_array_equal(res.target, predicted)
    explicit = ex.explain(x, target=predicted)
    np.testing.assert_allclose(res.relevance, explicit.relevance, rtol=0, atol=0)
    for i in range(N_SAMPLES):
        ref, _ = tutorial_lrp(x[i], W, B, predicted[i])
        np.testing.assert_allclose(res.relevance[i], ref[0], rtol=RTOL, atol=ATOL_REL * np.abs(ref[0]).max())


def test_lrp0_without_biases_conserves_at_every_layer():
    """With zero biases and LRP-0 everywhere, sum(R[l]) = the explained output at every layer
    (the overview's conservation, eq. 2): nothing is absorbed by biases or stabilizers."""
    W, B = make_params(seed=0, zero_bias=True)
    x = make_inputs(seed=1)
    ex = lrp_onnx.Explainer(make_model(W, B), composite={"rules": [{"where": "all", "rule": {"rule": "LRP0"}}]})
    res = ex.explain(x, layers=ACTS)
    explained = res.output[np.arange(N_SAMPLES), res.target].astype(np.float64)
    assert np.all(explained > 0)
    np.testing.assert_allclose(res.total, explained, rtol=1e-6)
    # float32 sums of a few hundred relevances of mixed sign: 1e-4 of the explained output
    # (LRP-0 on the input layer can make individual relevances larger than the total: sum|R|
    # up to ~10x the total, and 3 layers * sqrt(784) * 2^-24 = 5e-6 of sum|R| per sum).
    for name, rel in (("x", res.relevance), ("a1", res.layers["a1"]), ("a2", res.layers["a2"])):
        sums = rel.sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(sums, explained, rtol=1e-4, err_msg=f"conservation at {name}")
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-4)
