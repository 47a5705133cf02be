"""Random attention blocks against a numpy AttnLRP / CP-LRP oracle written here (hypothesis).

A block is drawn (batch 1-2, sequence 1-4, 1-2 heads of size 2-3, optional biases, optional
causal mask of -inf or of float32's most negative value, optional residual) and built with
onnx.helper the way exporters write multi-head attention:

    q, k, v = x W (+ b)            MatMul with a constant weight (+ Add of a constant)
    heads   = Transpose(Reshape(.)) (N, H, T, d); keys transposed to (N, H, d, T)
    A       = Softmax(q k^T / sqrt(d) (+ mask))
    o       = A v -> Transpose, Reshape -> o W_o (+ b_o) (+ x) -> Flatten -> Gemm (3 classes)

The oracle replays the graph op by op in numpy (float64) with the rules of the composites:
Epsilon(1e-6) on the linear layers, R_i = x_i / stab(y) R on every Add (1e-6), the uniform rule
s = R / stab(2 z) on both products (CP-LRP: the attention matrix constant, s = R / stab(z), none
to A), R_x = x (R - A sum R) on the Softmax with masked logits as 0 (CP-LRP: none), the inverse
shape ops; stab(u) = u + eps sgn(u), sgn(0) = +1, eps = 1e-8 for the products.

Tolerance (as tests/test_fuzz.py): the engine is float32, the oracle float64; the oracle is also
run in float32 and an example where that moves the result by more than CONDITION = 1e-6 of
max|R| has a denominator near zero (ill-conditioned) and is rejected; on the rest the engine
must agree to rtol 1e-4, atol 1e-5 * max|R|: float32 rounding through ~12 ops of <= 12 terms is
about 12 * 12 * 2^-24 ~ 1e-5 relative at worst; the largest error measured on these draws was
3.5e-7 of max|R| (median 1e-7).
The explicit cases check that two wrong variants (all of a product's relevance to each factor;
the Softmax rule without its -A sum R term) are outside that tolerance.

Conservation: without biases, under CP-LRP every op is linear or a proportional split, so sum
R_x = sum R_out (up to the stabilizers: asserted to 1e-4); under AttnLRP the Softmax rule
absorbs the bias term of its Taylor expansion, so it does not conserve (not asserted).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import onnx
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx

RTOL, ATOL_SCALE, CONDITION = 1e-4, 1e-5, 1e-6
EPS_LINEAR, EPS_SUM, EPS_PRODUCT = 1e-6, 1e-6, 1e-8
CLASSES = 3


@dataclass(frozen=True)
class Block:
    batch: int
    seq: int
    heads: int
    head_dim: int
    mask: str          # "none", "inf", "min"
    bias: bool
    residual: bool
    seed: int

    @property
    def width(self):
        return self.heads * self.head_dim


def weights(block: Block):
    rng = np.random.default_rng(block.seed)
    d = block.width
    w = {name: (rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32) for name in ("Wq", "Wk", "Wv", "Wo")}
    w["Wc"] = rng.normal(size=(CLASSES, block.seq * d)).astype(np.float32)
    if block.bias:
        w.update({f"b{n}": rng.normal(scale=0.3, size=d).astype(np.float32) for n in ("q", "k", "v", "o")})
    if block.mask != "none":
        value = -np.inf if block.mask == "inf" else np.finfo(np.float32).min
        w["mask"] = np.triu(np.full((block.seq, block.seq), value, np.float32), k=1)
    w["scale"] = np.array(1 / np.sqrt(block.head_dim), np.float32)
    x = rng.normal(size=(block.batch, block.seq, d)).astype(np.float32)
    return w, x


def build(block: Block, w) -> onnx.ModelProto:
    t, h, dh, d = block.seq, block.heads, block.head_dim, block.width
    shapes = {"heads": np.array([0, t, h, dh], np.int64), "merged": np.array([0, t, d], np.int64)}
    nodes = []

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def project(x, name):
        z = node("MatMul", [x, f"W{name}"], f"{name}_z")
        return node("Add", [z, f"b{name}"], f"{name}_b") if block.bias else z

    q = node("Transpose", [node("Reshape", [project("x", "q"), "heads"], "q_r")], "q_h", perm=[0, 2, 1, 3])
    k = node("Transpose", [node("Reshape", [project("x", "k"), "heads"], "k_r")], "k_h", perm=[0, 2, 3, 1])
    v = node("Transpose", [node("Reshape", [project("x", "v"), "heads"], "v_r")], "v_h", perm=[0, 2, 1, 3])
    logits = node("Mul", [node("MatMul", [q, k], "qk"), "scale"], "logits")
    if block.mask != "none":
        logits = node("Add", [logits, "mask"], "masked")
    a = node("Softmax", [logits], "attn", axis=-1)
    o = node("Reshape", [node("Transpose", [node("MatMul", [a, v], "av")], "o_t", perm=[0, 2, 1, 3]), "merged"], "o")
    p = project(o, "o")
    if block.residual:
        p = node("Add", [p, "x"], "residual")
    node("Gemm", [node("Flatten", [p], "flat"), "Wc"], "y", transB=1)
    inits = [numpy_helper.from_array(v, k) for k, v in {**w, **shapes}.items()]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def stab(u, eps):
    return u + eps * np.where(u >= 0, 1.0, -1.0).astype(u.dtype)


def oracle(block: Block, w, x, cp: bool, dtype=np.float64, wrong: str = ""):
    """R_x of the block (module doc) for the explained class 0, in ``dtype``. ``wrong``:
    "product" (s = R / stab(z) on both factors) or "softmax" (R_x = x R)."""
    w = {k: v.astype(dtype) for k, v in w.items()}
    x = x.astype(dtype)
    n, t, h, dh, d = block.batch, block.seq, block.heads, block.head_dim, block.width
    to_heads = lambda u: u.reshape(n, t, h, dh).transpose(0, 2, 1, 3)   # noqa: E731
    from_heads = lambda u: u.transpose(0, 2, 1, 3).reshape(n, t, d)   # noqa: E731
    z = {name: x @ w[f"W{name}"] for name in "qkv"}
    y = {name: z[name] + w[f"b{name}"] if block.bias else z[name] for name in "qkv"}
    q, k, v = (to_heads(y[name]) for name in "qkv")
    logits = q @ k.transpose(0, 1, 3, 2) * w["scale"]
    masked = logits + w["mask"] if block.mask != "none" else logits
    e = np.exp(masked - masked.max(axis=-1, keepdims=True))
    a = e / e.sum(axis=-1, keepdims=True)
    av = a @ v
    o = from_heads(av)
    po = o @ w["Wo"]
    p = po + w["bo"] if block.bias else po
    r_in = p + x if block.residual else p
    out = r_in.reshape(n, -1) @ w["Wc"].T

    r_out = np.zeros_like(out)
    r_out[:, 0] = out[:, 0]
    r = r_in.reshape(n, -1) * ((r_out / stab(out, EPS_LINEAR)) @ w["Wc"])
    r = r.reshape(n, t, d)
    r_x = np.zeros_like(x)
    if block.residual:
        r_x += x / stab(r_in, EPS_SUM) * r
        r = p / stab(r_in, EPS_SUM) * r
    if block.bias:
        r = po / stab(p, EPS_SUM) * r
    r_av = to_heads(o * ((r / stab(po, EPS_LINEAR)) @ w["Wo"].T))
    factor = 1.0 if cp or wrong == "product" else 2.0
    s = r_av / stab(factor * av, EPS_PRODUCT)
    r_v = v * (a.transpose(0, 1, 3, 2) @ s)
    r_y = {"v": from_heads(r_v)}
    if not cp:
        r_a = a * (s @ v.transpose(0, 1, 3, 2))
        x_logit = np.where(np.isneginf(masked), 0.0, masked)
        r_masked = x_logit * r_a if wrong == "softmax" else x_logit * (r_a - a * r_a.sum(axis=-1, keepdims=True))
        r_logits = logits / stab(masked, EPS_SUM) * r_masked if block.mask != "none" else r_masked
        kt = k.transpose(0, 1, 3, 2)
        s_qk = r_logits / stab((1.0 if wrong == "product" else 2.0) * (q @ kt), EPS_PRODUCT)
        r_y["q"] = from_heads(q * (s_qk @ k))
        r_y["k"] = from_heads((kt * (q.transpose(0, 1, 3, 2) @ s_qk)).transpose(0, 1, 3, 2))
    for name, rel in r_y.items():
        if block.bias:
            rel = z[name] / stab(y[name], EPS_SUM) * rel
        r_x += x * ((rel / stab(z[name], EPS_LINEAR)) @ w[f"W{name}"].T)
    return r_x, r_out


def close(actual, reference):
    scale = np.abs(reference).max()
    return np.all(np.abs(actual - reference) <= RTOL * np.abs(reference) + ATOL_SCALE * scale)


def check(block: Block, composite: str) -> bool:
    """Engine against the oracle; False (rejected) for an ill-conditioned example."""
    w, x = weights(block)
    cp = composite == "cp_lrp"
    reference, r_out = oracle(block, w, x, cp)
    single, _ = oracle(block, w, x, cp, np.float32)
    if not np.all(np.isfinite(single)) or np.abs(single - reference).max() > CONDITION * np.abs(reference).max():
        return False
    res = lrp_onnx.Explainer(build(block, w), composite).explain(x, target=0)
    assert np.all(np.isfinite(res.relevance))
    assert close(res.relevance, reference), (block, composite, np.abs(res.relevance - reference).max(), np.abs(reference).max())
    if cp and not block.bias:
        np.testing.assert_allclose(res.relevance.reshape(block.batch, -1).sum(axis=1), r_out.sum(axis=1), rtol=1e-4,
                                   atol=1e-4 * np.abs(reference).sum())
    return True


blocks = st.builds(Block, batch=st.integers(1, 2), seq=st.integers(1, 4), heads=st.integers(1, 2),
                   head_dim=st.integers(2, 3), mask=st.sampled_from(["none", "inf", "min"]), bias=st.booleans(),
                   residual=st.booleans(), seed=st.integers(0, 2 ** 16))


@settings(deadline=None, derandomize=True, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(block=blocks, composite=st.sampled_from(["attnlrp", "cp_lrp"]))
def test_random_attention_blocks(block, composite):
    assume(check(block, composite))


EXPLICIT = [Block(2, 4, 2, 3, "inf", True, True, 0), Block(1, 3, 1, 2, "min", False, False, 1),
            Block(2, 3, 2, 2, "none", False, True, 2)]


@pytest.mark.parametrize("block", EXPLICIT)
def test_explicit_blocks_and_wrong_variants(block):
    """Well-conditioned blocks: the engine matches both oracles, and rejects the wrong variants."""
    for composite in ("attnlrp", "cp_lrp"):
        assert check(block, composite), "an explicit case must be well conditioned"
    w, x = weights(block)
    got = lrp_onnx.Explainer(build(block, w), "attnlrp").explain(x, target=0).relevance
    for wrong in ("product", "softmax"):
        assert not close(got, oracle(block, w, x, False, wrong=wrong)[0]), wrong
