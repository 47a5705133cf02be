"""Every rule against a dense numpy oracle, independent of the engine.

Each one-layer model (Gemm, MatMul, Conv, AveragePool, MaxPool) is written here as a dense
matrix on flattened samples, ``z = a @ M + b`` (M: in_features x out_features), built by
explicit index loops from the ONNX operator definitions. Every rule is then plain matrix
algebra in float64 (zennit 0.5.1 conventions, see lrp_onnx/rules.py), and the engine
(float32, onnxruntime) must match it. A last group checks that LRP-0 (and z+) with zero biases
conserve the relevance sum at every layer of a small Conv/MaxPool/Gemm net.

Tolerances: float32 engine against a float64 reference: rtol 1e-4 and atol 1e-5 * max|ref|,
i.e. the absolute part is relative to the reference's own scale (one layer, fan-in <= 64:
<= 64 * 2^-24 = 3.8e-6 of sum|terms| for a dot product, a few such roundings per rule, so an
a-priori bound, tests/tolerances.py). A wrong oracle (epsilon 10x, gamma 0.25 -> 0.3) fails it
(test_the_tolerance_rejects_a_wrong_oracle). Each case is first checked to
be well conditioned (the same formula in float32 agrees with float64 to half that
tolerance: no near-zero denominator amplifies rounding), so a failure is a disagreement, not
float32 noise.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx import rules as R

OPSET = 17
RTOL = 1e-4
ATOL_SCALE = 1e-5          # atol = ATOL_SCALE * max|reference|

#: Largest error seen per family of checks, as a fraction of max|reference| (printed at the end).
MAX_ERRORS: Dict[str, float] = {}


# --------------------------------------------------------------------------- comparison


def assert_close(actual, reference, family: str, what: str = "") -> None:
    """actual ~ reference with rtol RTOL and atol ATOL_SCALE * max|reference|."""
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    scale = float(np.abs(reference).max()) or 1.0
    error = float(np.abs(actual - reference).max()) / scale
    MAX_ERRORS[family] = max(MAX_ERRORS.get(family, 0.0), error)
    np.testing.assert_allclose(actual, reference, rtol=RTOL, atol=ATOL_SCALE * scale, err_msg=what)


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    yield
    if MAX_ERRORS:
        print("\nmax |engine - oracle| / max|oracle|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in sorted(MAX_ERRORS.items())))


# --------------------------------------------------------------------------- models


def make_model(nodes, x_shape: Sequence[int], y_shape: Sequence[int], params: Dict[str, np.ndarray],
               output: str = "y") -> onnx.ModelProto:
    """An opset-17 float32 model with input "x" (N, *x_shape), output (N, *y_shape) and the
    given initializers. The declared output shape is the test's own geometry: shape
    inference rejects the model if it disagrees."""
    graph = helper.make_graph(
        list(nodes), "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", *y_shape])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in params.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def out_size(size, kernel, stride, begin, end, dilation=1, ceil_mode=False) -> int:
    """floor (or ceil) ((size + pads - dilated kernel) / stride) + 1 (ONNX Conv/pool)."""
    span = size + begin + end - ((kernel - 1) * dilation + 1)
    n = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (n - 1) * stride >= size + begin:   # a last window starting in the end padding is dropped
        n -= 1
    return n


def same_pads(size, kernel, stride, dilation, auto_pad) -> Tuple[int, int, int]:
    """(output size, begin pad, end pad) for auto_pad SAME_UPPER / SAME_LOWER (ONNX Conv)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
    small, large = total // 2, total - total // 2
    return (out, small, large) if auto_pad == "SAME_UPPER" else (out, large, small)


# --------------------------------------------------------------------------- dense layers

RHO: Dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "identity": lambda w, g: w,
    "positive": lambda w, g: np.maximum(w, 0),
    "negative": lambda w, g: np.minimum(w, 0),
    "gamma_positive": lambda w, g: w + g * np.maximum(w, 0),
    "gamma_negative": lambda w, g: w + g * np.minimum(w, 0),
    "square": lambda w, g: w * w,
    "ones": lambda w, g: np.ones_like(w),
}


@dataclass
class Dense:
    """A one-layer model and its dense form z = a @ M(W) + b over flattened samples.

    ``index``: (rows, cols, weight index) triples such that M[rows, cols] += W.flat[widx];
    parameter modifiers rho act on W and b (zennit), then M is rebuilt. Pooling has no
    parameters: ``fixed`` is its M and every modifier leaves it alone (as the engine and
    zennit do)."""

    model: onnx.ModelProto
    x_shape: Tuple[int, ...]
    y_shape: Tuple[int, ...]
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None        # one value per output feature (already broadcast)
    index: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
    fixed: Optional[np.ndarray] = None
    channels: int = 1                        # input channels (ZBox per-channel bounds)
    windows: Tuple = ()                      # pooling: (output index, [input indices]) pairs
    relu_input: bool = False                 # a Relu sits between x and the layer: a = max(0, x)

    @property
    def d_in(self):
        return int(np.prod(self.x_shape))

    @property
    def d_out(self):
        return int(np.prod(self.y_shape))

    @functools.lru_cache(maxsize=None)
    def rho(self, kind: str = "identity", gamma: float = 0.0, zero_bias: bool = False):
        """(rho(M), rho(b)) in float64; rho(b) is zeros without a bias or with zero_bias."""
        if self.fixed is not None:
            return self.fixed, np.zeros(self.d_out)
        w = RHO[kind](self.weight.astype(np.float64), gamma)
        rows, cols, widx = self.index
        m = np.zeros((self.d_in, self.d_out))
        np.add.at(m, (rows, cols), w.reshape(-1)[widx])
        if self.bias is None or zero_bias:
            return m, np.zeros(self.d_out)
        return m, RHO[kind](self.bias.astype(np.float64), gamma)

    __hash__ = object.__hash__


def gemm_layer(rng, k=6, n=5, trans_b=1, alpha=1.0, beta=1.0, bias_shape=(5,), matmul=None) -> Dense:
    """Y = alpha * X @ op(B) + beta * C (ONNX Gemm), or MatMul / MatMul+Add (``matmul`` "plain"
    or "add"). Dense form: M = alpha * op(B), b = beta * C broadcast to (n,); the rules' rho
    acts on this effective M (a negative alpha flips which weights are "positive")."""
    B = rng.normal(size=(n, k) if trans_b and not matmul else (k, n)).astype(np.float32)
    C = rng.normal(size=bias_shape).astype(np.float32) if bias_shape is not None else None
    if matmul:
        nodes = [helper.make_node("MatMul", ["x", "B"], ["y" if matmul == "plain" else "xw"])]
        if matmul == "add":
            nodes.append(helper.make_node("Add", ["xw", "C"], ["y"]))
        params = {"B": B} if matmul == "plain" else {"B": B, "C": C}
        effective = B.astype(np.float64)
        bias = None if matmul == "plain" else np.broadcast_to(C.astype(np.float64), (n,)).copy()
    else:
        inputs = ["x", "B"] + (["C"] if C is not None else [])
        nodes = [helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha, beta=beta)]
        params = {"B": B, **({"C": C} if C is not None else {})}
        effective = alpha * (B.T if trans_b else B).astype(np.float64)
        bias = None if C is None else beta * np.broadcast_to(C.astype(np.float64), (1, n)).reshape(n)
    # the stored weight is M itself: M[j, k] <- weight[j, k]
    rows, cols = np.indices((k, n))
    index = (rows.ravel(), cols.ravel(), np.arange(k * n))
    return Dense(make_model(nodes, (k,), (n,), params), (k,), (n,), effective, bias, index, channels=k)


def conv_layer(rng, x_shape, c_out, kernel, strides=None, pads=None, dilations=None, group=1,
               auto_pad=None, bias=True) -> Dense:
    """ONNX Conv: y[m, o] = b[m] + sum_{c in group(m), k} x[c, o*s - pad_begin + k*d] * W[m, c', k].
    Built as explicit (row, col, weight index) loops over m, c', o, k."""
    c_in, *spatial = x_shape
    n = len(spatial)
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    W = rng.normal(size=(c_out, c_in // group, *kernel)).astype(np.float32)
    b = rng.normal(size=(c_out,)).astype(np.float32) if bias else None
    out, begin = [], []
    for i in range(n):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o, pb, _ = same_pads(spatial[i], kernel[i], strides[i], dilations[i], auto_pad)
        else:
            pb, pe = (pads or [0] * 2 * n)[i], (pads or [0] * 2 * n)[i + n]
            o = out_size(spatial[i], kernel[i], strides[i], pb, pe, dilations[i])
        out.append(o)
        begin.append(pb)
    rows, cols, widx = [], [], []
    per_group_out, per_group_in = c_out // group, c_in // group
    for m in range(c_out):
        g = m // per_group_out
        for ci in range(per_group_in):
            c = g * per_group_in + ci
            for o in itertools.product(*map(range, out)):
                for k in itertools.product(*map(range, kernel)):
                    i = [o[d] * strides[d] - begin[d] + k[d] * dilations[d] for d in range(n)]
                    if all(0 <= i[d] < spatial[d] for d in range(n)):
                        rows.append(np.ravel_multi_index((c, *i), x_shape))
                        cols.append(np.ravel_multi_index((m, *o), (c_out, *out)))
                        widx.append(np.ravel_multi_index((m, ci, *k), W.shape))
    attrs = dict(kernel_shape=list(kernel), strides=strides, dilations=dilations, group=group)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    elif pads:
        attrs["pads"] = list(pads)
    node = helper.make_node("Conv", ["x", "W"] + (["b"] if bias else []), ["y"], **attrs)
    params = {"W": W, **({"b": b} if bias else {})}
    y_shape = (c_out, *out)
    full_bias = None if b is None else np.repeat(b.astype(np.float64), int(np.prod(out)))
    index = (np.array(rows), np.array(cols), np.array(widx))
    return Dense(make_model([node], x_shape, y_shape, params), tuple(x_shape), y_shape, W, full_bias, index,
                 channels=c_in)


def after_relu(layer: Dense) -> Dense:
    """The same layer fed by Relu(x): its input is non-negative by construction, so the engine
    drops the a- branches; relevance passes the Relu unchanged."""
    graph = layer.model.graph
    for node in graph.node:
        node.input[:] = ["x_relu" if t == "x" else t for t in node.input]
    graph.node.insert(0, helper.make_node("Relu", ["x"], ["x_relu"]))
    layer.relu_input = True
    return layer


def pool_windows(x_shape, kernel, strides, pads, ceil_mode=False):
    """(output spatial shape, [(output flat index, [input flat indices in its window])]) for a
    pooling window of the given geometry (per channel, windows clipped to the input)."""
    c, *spatial = x_shape
    n = len(spatial)
    pads = list(pads or [0] * 2 * n)
    out = [out_size(spatial[i], kernel[i], strides[i], pads[i], pads[i + n], 1, ceil_mode) for i in range(n)]
    windows = []
    for ch in range(c):
        for o in itertools.product(*map(range, out)):
            members = []
            for k in itertools.product(*map(range, kernel)):
                i = [o[d] * strides[d] - pads[d] + k[d] for d in range(n)]
                if all(0 <= i[d] < spatial[d] for d in range(n)):
                    members.append(np.ravel_multi_index((ch, *i), x_shape))
            windows.append((np.ravel_multi_index((ch, *o), (c, *out)), members))
    return out, windows


def pool_layer(x_shape, kernel, strides, pads=None, op="AveragePool", count_include_pad=0, ceil_mode=0) -> Dense:
    """AveragePool (or MaxPool) and the dense average-pool matrix: M[i, o] = 1/d_o for i in
    window(o), d_o = number of non-pad elements (count_include_pad=0) or the kernel size (1)."""
    out, windows = pool_windows(x_shape, kernel, strides, pads, bool(ceil_mode))
    y_shape = (x_shape[0], *out)
    m = np.zeros((int(np.prod(x_shape)), int(np.prod(y_shape))))
    for o, members in windows:
        m[members, o] = 1.0 / (math.prod(kernel) if count_include_pad else len(members))
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), ceil_mode=ceil_mode)
    if pads:
        attrs["pads"] = list(pads)
    if op == "AveragePool":
        attrs["count_include_pad"] = count_include_pad
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    return Dense(make_model([node], x_shape, y_shape, {}), tuple(x_shape), y_shape, fixed=m,
                 channels=x_shape[0], windows=tuple(windows))


# --------------------------------------------------------------------------- dense oracles


def stabilize(z, epsilon, relative=0.0, signed=True):
    """incr(z) = z + (epsilon + relative * rms(z)) * sgn(z); rms over each sample, sgn(0) = +1,
    sgn = 1 when not signed."""
    eps = epsilon + relative * np.sqrt(np.mean(z * z, axis=1, keepdims=True))
    return z + eps * (np.where(z >= 0, 1.0, -1.0) if signed else 1.0)


def oracle(rule: R.Rule, layer: Dense, a: np.ndarray, mask: np.ndarray, output=None, dtype=np.float64):
    """R_in of ``rule`` on ``layer`` (a: (n, d_in), mask: (n, d_out)) as dense matrix algebra,
    evaluated in ``dtype``. The relevance entering the layer is R = o * mask, o = a M + b
    (or ``output``, e.g. a max pool's output read as an average pool).

    LRP0 / Epsilon   R_in = a * (R / incr(a M + b)) M^T
    Gamma            o = a M + b; for o > 0: z = a+ M(W+gW+) + b(+g b+) + a- M(W+gW-),
                     R_in = a+ s M(W+gW+)^T + a- s M(W+gW-)^T with s = R [o>0] / incr(z);
                     for o < 0 the same with W+gW- on a+ (and on the bias) and W+gW+ on a-.
    ZPlus            z = a+ M(W+) + b+ + a- M(W-);  R_in = a+ s M(W+)^T + a- s M(W-)^T
    AlphaBeta        alpha * (ZPlus part) - beta * (a+ M(W-) + b- + a- M(W+) part)
    ZBox             z = a M + b - (l M(W+) + b+) - (h M(W-) + b-);
                     R_in = a s M^T - l s M(W+)^T - h s M(W-)^T
    Flat             z = 1 M(1) (no bias);     R_in = s M(1)^T
    WSquare          z = 1 M(W^2) + b^2;       R_in = s M(W^2)^T
    Pass             R_in = R
    (M(rho(W)), rho(b): the layer's matrix and bias with rho applied to its parameters;
    zero_bias drops b everywhere, and a- branches never carry a bias.)
    """
    name = type(rule).__name__
    a, mask = a.astype(dtype), mask.astype(dtype)
    rho = lambda *key: tuple(v.astype(dtype) for v in layer.rho(*key))
    m, b = rho()
    r_out = (a @ m + b if output is None else output.astype(dtype)) * mask
    if name == "Pass":
        return r_out
    zb = getattr(rule, "zero_bias", False)
    incr = functools.partial(stabilize, epsilon=dtype(rule.epsilon), relative=dtype(getattr(rule, "relative", 0.0)),
                             signed=rule.signed)
    ap, an = np.maximum(a, 0), np.minimum(a, 0)

    def part(pairs, bias, upper):
        """sum over (input, M) of input * (upper / incr(sum input M + bias)) M^T."""
        s = upper / incr(sum(x @ w for x, w in pairs) + bias)
        return sum(x * (s @ w.T) for x, w in pairs)

    if name in ("LRP0", "Epsilon"):
        m, b = rho("identity", 0.0, zb)
        return part([(a, m)], b, r_out)
    if name == "Gamma":
        g = rule.gamma
        (mgp, bgp), (mgn, bgn) = rho("gamma_positive", g, zb), rho("gamma_negative", g, zb)
        o = a @ m + b
        return (part([(ap, mgp), (an, mgn)], bgp, r_out * (o > 0))
                + part([(ap, mgn), (an, mgp)], bgn, r_out * (o < 0)))
    if name in ("ZPlus", "AlphaBeta"):
        (mp, bp), (mn, bn) = rho("positive", 0.0, zb), rho("negative", 0.0, zb)
        positive = part([(ap, mp), (an, mn)], bp, r_out)
        if name == "ZPlus":
            return positive
        return dtype(rule.alpha) * positive - dtype(rule.beta) * part([(ap, mn), (an, mp)], bn, r_out)
    if name == "ZBox":
        low, high = (bound_vector(v, layer, len(a)).astype(dtype) for v in (rule.low, rule.high))
        m, b = rho("identity", 0.0, zb)
        (mp, bp), (mn, bn) = rho("positive", 0.0, zb), rho("negative", 0.0, zb)
        s = r_out / incr(a @ m + b - (low @ mp + bp) - (high @ mn + bn))
        return a * (s @ m.T) - low * (s @ mp.T) - high * (s @ mn.T)
    if name in ("Flat", "WSquare"):
        m, b = rho("ones", 0.0, True) if name == "Flat" else rho("square", 0.0, zb)
        s = r_out / incr(np.ones((len(a), layer.d_in), dtype) @ m + b)
        return s @ m.T
    raise AssertionError(name)


def reference(rule: R.Rule, layer: Dense, a: np.ndarray, mask: np.ndarray, output=None) -> np.ndarray:
    """The float64 oracle, after checking the test case is well conditioned: the same formula
    evaluated in float32 must agree with it to half the test tolerance (a near-zero
    denominator would amplify float32 rounding, and the engine runs in float32)."""
    exact = oracle(rule, layer, a, mask, output, np.float64)
    single = oracle(rule, layer, a, mask, output, np.float32).astype(np.float64)
    scale = float(np.abs(exact).max()) or 1.0
    assert np.allclose(single, exact, rtol=RTOL / 2, atol=ATOL_SCALE / 2 * scale), \
        f"ill-conditioned test case for {rule} (float32 vs float64 oracle: " \
        f"{np.abs(single - exact).max() / scale:.1e} of scale): change the data"
    return exact


def bound_vector(value, layer: Dense, n: int) -> np.ndarray:
    """A ZBox bound (scalar or one value per channel) as a flattened (n, d_in) input."""
    value = np.asarray(value, np.float64).reshape(-1)
    per_channel = np.broadcast_to(value, (layer.channels,))
    sample = np.broadcast_to(per_channel.reshape((-1,) + (1,) * (len(layer.x_shape) - 1)), layer.x_shape)
    return np.broadcast_to(sample.reshape(1, -1), (n, layer.d_in))


def maxpool_winner_oracle(layer: Dense, a: np.ndarray, r_out: np.ndarray) -> np.ndarray:
    """R_in[i] = sum of R_out[o] over the windows o whose arg-max is i (scatter-add)."""
    r_in = np.zeros_like(a)
    for sample in range(len(a)):
        for o, members in layer.windows:
            r_in[sample, members[int(np.argmax(a[sample, members]))]] += r_out[sample, o]
    return r_in


# --------------------------------------------------------------------------- running


def cached(fn):
    return functools.lru_cache(maxsize=None)(fn)


def seeded(seed: int):
    return np.random.default_rng(seed)


@functools.lru_cache(maxsize=None)
def explainer(case: str, rule_id: str, maxpool: str = "winner") -> lrp_onnx.Explainer:
    """The engine with ``rule`` on every layer of the one-layer model ``case`` (built once)."""
    layer = LAYERS[case]()
    rule = RULES[rule_id](layer)
    return lrp_onnx.Explainer(layer.model, composite=Composite(((Family("all"), rule),), maxpool=maxpool))


def run_case(case: str, rule_id: str, batch: int, maxpool: str = "winner"):
    """(engine relevance, oracle relevance, engine output, oracle output), flattened, explaining
    every output at once (a mask of ones; see ``conditioned_mask`` for unsigned stabilizers)."""
    layer = LAYERS[case]()
    rule = RULES[rule_id](layer)
    x = input_for(case, batch)
    a = x.reshape(batch, -1).astype(np.float64)
    if layer.relu_input:
        a = np.maximum(a, 0)
    mask = conditioned_mask(rule, layer, a)
    res = explainer(case, rule_id, maxpool).explain(x, target=mask.reshape(batch, *layer.y_shape).astype(np.float32))
    if layer.fixed is not None and layer.model.graph.node[0].op_type == "MaxPool" and maxpool == "winner":
        o = np.stack([[a[s, members].max() for _, members in layer.windows] for s in range(batch)])
        expected = maxpool_winner_oracle(layer, a, o * mask)
    else:
        m, b = layer.rho()
        o = a @ m + b
        expected = reference(rule, layer, a, mask)
    return res.relevance.reshape(batch, -1), expected, res.output.reshape(batch, -1), o


def conditioned_mask(rule: R.Rule, layer: Dense, a: np.ndarray) -> np.ndarray:
    """Ones, except for an unsigned stabilizer: z + eps crosses zero at z = -eps, so outputs
    with |z + eps| < 0.02 rms(z) are left out of the explanation (mask 0) to keep the
    comparison well conditioned."""
    mask = np.ones((len(a), layer.d_out))
    if isinstance(rule, (R.LRP0, R.Epsilon)) and not rule.signed:
        m, b = layer.rho("identity", 0.0, rule.zero_bias)
        z = a @ m + b
        rms = np.sqrt(np.mean(z * z, axis=1, keepdims=True))
        mask[np.abs(stabilize(z, rule.epsilon, getattr(rule, "relative", 0.0), False)) < 0.02 * rms] = 0.0
        assert mask.mean() >= 0.75
    return mask


def input_for(case: str, batch: int, low: float = -1.0) -> np.ndarray:
    """Seeded inputs in [low, 1]: by default with mixed signs, inside every ZBox used here."""
    rng = np.random.default_rng([batch, sum(map(ord, case))])
    return rng.uniform(low, 1, size=(batch, *LAYERS[case]().x_shape)).astype(np.float32)


#: One-layer models: case id -> Dense (built once).
LAYERS: Dict[str, Callable[[], Dense]] = {
    "gemm": cached(lambda: gemm_layer(seeded(1))),
    "gemm_transB0_alpha_beta": cached(lambda: gemm_layer(seeded(2), trans_b=0, alpha=0.7, beta=1.5, bias_shape=(1, 5))),
    "gemm_negative_alpha": cached(lambda: gemm_layer(seeded(3), alpha=-0.5, beta=-2.0)),
    "gemm_no_bias": cached(lambda: gemm_layer(seeded(4), bias_shape=None)),
    "matmul": cached(lambda: gemm_layer(seeded(5), matmul="plain")),
    "matmul_add": cached(lambda: gemm_layer(seeded(6), matmul="add")),
    "conv_stride2": cached(lambda: conv_layer(seeded(10), (4, 7, 7), 3, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1))),
    "conv_stride2_uncovered": cached(lambda: conv_layer(seeded(11), (3, 7, 8), 4, (3, 3), strides=(2, 2))),
    "conv_asymmetric_pads": cached(lambda: conv_layer(seeded(12), (3, 6, 7), 4, (3, 3), pads=(0, 1, 1, 0))),
    "conv_dilation2": cached(lambda: conv_layer(seeded(13), (3, 7, 7), 4, (3, 3), dilations=(2, 2), pads=(2, 1, 1, 2))),
    "conv_groups2": cached(lambda: conv_layer(seeded(14), (4, 6, 6), 6, (3, 3), pads=(1, 1, 1, 1), group=2)),
    "conv_same_upper": cached(lambda: conv_layer(seeded(15), (3, 7, 6), 4, (3, 3), strides=(2, 2), auto_pad="SAME_UPPER")),
    "conv_same_lower": cached(lambda: conv_layer(seeded(16), (3, 6, 6), 4, (4, 4), auto_pad="SAME_LOWER")),
    "relu_gemm": cached(lambda: after_relu(gemm_layer(seeded(7), k=8))),
    "relu_conv": cached(lambda: after_relu(conv_layer(seeded(18), (3, 6, 6), 4, (3, 3), pads=(1, 1, 1, 1)))),
    "conv_1d": cached(lambda: conv_layer(seeded(17), (3, 9), 4, (3,), strides=(2,), pads=(1, 0))),
    "avgpool_k2s2": cached(lambda: pool_layer((3, 6, 6), (2, 2), (2, 2))),
    "avgpool_k3s2p1": cached(lambda: pool_layer((3, 7, 7), (3, 3), (2, 2), (1, 1, 1, 1))),
    "avgpool_k3s2p1_include_pad": cached(lambda: pool_layer((3, 7, 7), (3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=1)),
    "avgpool_asymmetric_pads": cached(lambda: pool_layer((2, 6, 5), (2, 3), (2, 1), (0, 1, 1, 0))),
    "avgpool_ceil": cached(lambda: pool_layer((2, 6, 6), (3, 3), (2, 2), ceil_mode=1)),
    "maxpool_k3s2": cached(lambda: pool_layer((3, 7, 7), (3, 3), (2, 2), op="MaxPool")),
    "maxpool_k3s2p1": cached(lambda: pool_layer((3, 7, 7), (3, 3), (2, 2), (1, 1, 1, 1), op="MaxPool")),
    "maxpool_ceil": cached(lambda: pool_layer((2, 6, 6), (3, 3), (2, 2), op="MaxPool", ceil_mode=1)),
}

#: Rules: id -> factory(layer) (per-channel ZBox bounds depend on the layer's channels).
RULES: Dict[str, Callable[[Dense], R.Rule]] = {
    "LRP0": lambda l: R.LRP0(),
    "Epsilon": lambda l: R.Epsilon(0.1),
    "Epsilon_unsigned": lambda l: R.Epsilon(0.1, signed=False),
    "Epsilon_relative": lambda l: R.Epsilon(1e-3, relative=0.25),
    "Epsilon_relative_unsigned": lambda l: R.Epsilon(1e-9, relative=0.25, signed=False),
    "Epsilon_zero_bias": lambda l: R.Epsilon(0.05, zero_bias=True),
    "Gamma": lambda l: R.Gamma(0.25),
    "Gamma_1_zero_bias": lambda l: R.Gamma(1.0, zero_bias=True),
    "ZPlus": lambda l: R.ZPlus(),
    "ZPlus_zero_bias": lambda l: R.ZPlus(zero_bias=True),
    "AlphaBeta_2_1": lambda l: R.AlphaBeta(2.0, 1.0),
    "AlphaBeta_1_0": lambda l: R.AlphaBeta(1.0, 0.0),
    "ZBox": lambda l: R.ZBox(-1.0, 1.0),
    "ZBox_zero_bias": lambda l: R.ZBox(-1.0, 1.0, zero_bias=True),
    # behind a Relu the bounds are the layer input's own (tests/test_bounds.py: the model input's layout)
    "ZBox_per_channel": lambda l: R.ZBox(tuple(-1.0 - 0.25 * np.arange(l.channels) / l.channels),
                                         tuple(1.0 + 0.5 * np.arange(l.channels)[::-1] / l.channels),
                                         tensor="x_relu" if l.relu_input else None),
    "Flat": lambda l: R.Flat(),
    "WSquare": lambda l: R.WSquare(),
    "WSquare_zero_bias": lambda l: R.WSquare(zero_bias=True),
    "Pass": lambda l: R.Pass(),
}

LINEAR_CASES = [c for c in LAYERS if c.startswith(("gemm", "matmul", "conv", "relu"))]
AVGPOOL_CASES = [c for c in LAYERS if c.startswith("avgpool")]
MAXPOOL_CASES = [c for c in LAYERS if c.startswith("maxpool")]
PARAM_RULES = [r for r in RULES if r != "Pass"]
POOL_RULES = ["LRP0", "Epsilon", "Epsilon_unsigned", "Epsilon_relative", "Epsilon_relative_unsigned", "Flat", "ZPlus"]


# --------------------------------------------------------------------------- tests: one layer


ONE_LAYER_CASES = ([(case, rule) for case in LINEAR_CASES for rule in PARAM_RULES]
                   + [(case, rule) for case in AVGPOOL_CASES for rule in POOL_RULES])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case, rule_id", ONE_LAYER_CASES)
def test_one_layer_matches_dense_oracle(case, rule_id, batch):
    """Gemm, MatMul, Conv and AveragePool layers under each rule against the dense formula."""
    relevance, expected, output, o = run_case(case, rule_id, batch)
    assert_close(output, o, "forward", f"{case}: the test's dense matrix disagrees with onnxruntime")
    assert_close(relevance, expected, f"{rule_id}", f"{case} / {rule_id}")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", MAXPOOL_CASES)
def test_maxpool_winner_matches_argmax_scatter(case, batch):
    relevance, expected, output, o = run_case(case, "LRP0", batch, maxpool="winner")
    assert_close(output, o, "forward")
    assert_close(relevance, expected, "maxpool winner", case)
    # winner-take-all moves relevance, it neither creates nor absorbs it
    np.testing.assert_allclose(relevance.sum(1), expected.sum(1), rtol=1e-5, atol=1e-5 * np.abs(expected).sum())


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("rule_id", POOL_RULES)
@pytest.mark.parametrize("case", MAXPOOL_CASES)
def test_maxpool_avg_mode_is_average_pool(case, rule_id, batch):
    """maxpool="avg": the rule runs on the average pool of the same window (count_include_pad=0),
    while the relevance entering it is still max-pool output * mask. Inputs are non-negative,
    as after a ReLU (a mixed-sign window can average to ~0 under a large maximum)."""
    layer = LAYERS[case]()
    ex = explainer(case, rule_id, "avg")
    x = input_for(case, batch, low=0.0)
    res = ex.explain(x, target=np.ones((batch, *layer.y_shape), np.float32))
    a = x.reshape(batch, -1).astype(np.float64)
    o_max = np.stack([[a[s, m].max() for _, m in layer.windows] for s in range(batch)])
    expected = reference(RULES[rule_id](layer), layer, a, np.ones_like(o_max), output=o_max)
    assert_close(res.output.reshape(batch, -1), o_max, "forward")
    assert_close(res.relevance.reshape(batch, -1), expected, f"maxpool avg {rule_id}", f"{case} / {rule_id}")


@pytest.mark.parametrize("rule_id, wrong", [("Epsilon", lambda l: R.Epsilon(1.0)), ("Gamma", lambda l: R.Gamma(0.3))],
                         ids=["epsilon_10x", "gamma_0.3"])
@pytest.mark.parametrize("case", ["gemm", "conv_stride2"])
def test_the_tolerance_rejects_a_wrong_oracle(case, rule_id, wrong):
    """The engine's relevance passes against its own rule's oracle and fails assert_close (the
    tolerance above) against the oracle of a slightly wrong rule."""
    relevance, expected, _, _ = run_case(case, rule_id, 3)
    assert_close(relevance, expected, "wrong oracle: the right one")
    layer = LAYERS[case]()
    a = input_for(case, 3).reshape(3, -1).astype(np.float64)
    if layer.relu_input:
        a = np.maximum(a, 0)
    mask = conditioned_mask(RULES[rule_id](layer), layer, a)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        np.testing.assert_allclose(relevance, oracle(wrong(layer), layer, a, mask, None, np.float64),
                                   rtol=RTOL, atol=ATOL_SCALE * np.abs(expected).max())


def test_pass_rule_returns_the_output_relevance():
    """Pass on a layer with equal input and output shapes (a square Gemm): R_in = R_out."""
    layer = gemm_layer(seeded(7), k=5, n=5)
    ex = lrp_onnx.Explainer(layer.model, composite=Composite(((Family("all"), R.Pass()),)))
    x = seeded(8).uniform(-1, 1, size=(3, 5)).astype(np.float32)
    res = ex.explain(x, target=np.ones((3, 5), np.float32))
    assert_close(res.relevance, res.output, "Pass")


@pytest.mark.parametrize("rule_id", ["LRP0", "Gamma", "AlphaBeta_2_1", "ZBox_per_channel"])
@pytest.mark.parametrize("case", ["gemm", "conv_groups2"])
def test_integer_targets_select_one_output(case, rule_id):
    """target=int / one int per sample / None: relevance at the output is output * one-hot."""
    layer = LAYERS[case]()
    x = input_for(case, 3)
    a = x.reshape(3, -1).astype(np.float64)
    m, b = layer.rho()
    o = a @ m + b
    ex = explainer(case, rule_id)
    for target, picks in ((2, [2, 2, 2]), (np.array([0, 4, 1]), [0, 4, 1]), (None, o.argmax(1))):
        res = ex.explain(x, target=target)
        np.testing.assert_array_equal(res.target, picks)
        hot = np.zeros_like(o)
        hot[np.arange(3), picks] = 1.0
        expected = reference(RULES[rule_id](layer), layer, a, hot)
        assert_close(res.relevance.reshape(3, -1), expected, "targets", f"{case} / {rule_id} / {target}")


@pytest.mark.parametrize("first,second", [("ZPlus", "AlphaBeta_1_0"), ("ZBox", "ZBox_zero_bias")])
@pytest.mark.parametrize("case", ["gemm", "conv_stride2"])
def test_rules_that_coincide(case, first, second):
    """ZPlus is AlphaBeta(1, 0) by definition. ZBox's zero_bias has no effect: its three
    branches carry b, b+ and b-, and z = ... + b - b+ - b- = ... + 0."""
    x = input_for(case, 3)
    mask = np.ones((3, *LAYERS[case]().y_shape), np.float32)
    one, two = (explainer(case, r).explain(x, target=mask).relevance for r in (first, second))
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6 * np.abs(one).max())


def test_json_composite_equals_composite():
    """The JSON form of a rule (lists for per-channel bounds) gives the same relevance."""
    case = "conv_stride2"
    rule = RULES["ZBox_per_channel"](LAYERS[case]())
    spec = {"rules": [{"where": "all", "rule": rule.to_dict()}], "maxpool": "avg"}
    x = input_for(case, 3)
    mask = np.ones((3, *LAYERS[case]().y_shape), np.float32)
    from_json = lrp_onnx.Explainer(LAYERS[case]().model, composite=spec).explain(x, target=mask)
    np.testing.assert_array_equal(from_json.relevance, explainer(case, "ZBox_per_channel").explain(x, target=mask).relevance)


# --------------------------------------------------------------------------- tests: conservation


def small_net(rng) -> onnx.ModelProto:
    """Conv(3->4, k3, pad 1) -> Relu -> MaxPool(k2 s2) -> Flatten -> Gemm(64->10) -> Relu ->
    Gemm(10->5), every bias zero, input (N, 3, 8, 8)."""
    params = {
        "W1": rng.normal(size=(4, 3, 3, 3)), "B1": np.zeros(4),
        "W2": rng.normal(size=(10, 64)) / 8, "B2": np.zeros(10),
        "W3": rng.normal(size=(5, 10)), "B3": np.zeros(5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W2", "B2"], ["fc1"], transB=1),
        helper.make_node("Relu", ["fc1"], ["relu2"]),
        helper.make_node("Gemm", ["relu2", "W3", "B3"], ["y"], transB=1),
    ]
    return make_model(nodes, (3, 8, 8), (5,), params)


@pytest.fixture(scope="module")
def net():
    return small_net(seeded(20)), seeded(21).uniform(-1, 1, size=(3, 3, 8, 8)).astype(np.float32)


def layer_sums(ex, x, target):
    res = ex.explain(x, target=target, layers=ex.layer_names)
    assert set(res.layers) == set(ex.layer_names) and "x" in res.layers
    sums = {t: r.reshape(len(x), -1).sum(1, dtype=np.float64) for t, r in res.layers.items()}
    scale = {t: np.abs(r).reshape(len(x), -1).sum(1, dtype=np.float64) for t, r in res.layers.items()}
    return res, sums, scale


CONSERVING = {
    "LRP0": R.LRP0(),
    "ZPlus": R.ZPlus(),
    "ZPlus_zero_bias": R.ZPlus(zero_bias=True),
}


@pytest.mark.parametrize("maxpool", ["winner", "avg"])
@pytest.mark.parametrize("rule_id,target", [
    ("LRP0", "all_outputs"), ("LRP0", "predicted"),
    ("ZPlus", "positive_outputs"), ("ZPlus", "predicted"), ("ZPlus_zero_bias", "positive_outputs"),
])
def test_zero_bias_conserves_relevance_at_every_layer(net, rule_id, target, maxpool):
    """With zero biases, LRP-0 and z+ give sum_i R_i = sum_k R_k at every layer (Montavon et al.
    2019, eq. 2): every layer's relevance sums to the explained output.

    z+ conserves only where z+ > 0: an output that is negative with no positive contribution
    (z+ = 0) absorbs its relevance, so z+ explains positive outputs (the predicted one, or all
    positive ones). LRP-0 conserves all outputs at once."""
    model, x = net
    ex = lrp_onnx.Explainer(model, composite=Composite(((Family("all"), CONSERVING[rule_id]),), maxpool=maxpool))
    output = ex.explain(x).output
    mask = {"all_outputs": np.ones_like(output), "positive_outputs": (output > 0).astype(np.float32),
            "predicted": None}[target]
    res, sums, scale = layer_sums(ex, x, mask)
    assert len(ex.layer_names) == 7, ex.layer_names    # x, conv, relu1, pool, flat, fc1, relu2
    assert np.all(np.abs(res.total) > 0.1)
    for tensor, total in sums.items():
        np.testing.assert_allclose(total, res.total, rtol=1e-5, atol=1e-5 * scale[tensor].max(), err_msg=tensor)
        MAX_ERRORS["conservation"] = max(MAX_ERRORS.get("conservation", 0.0),
                                         float(np.abs(total - res.total).max() / scale[tensor].max()))
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-4)


def test_epsilon_absorbs_little_with_small_epsilon_and_more_with_large(net):
    """LRP-epsilon conserves only approximately: with epsilon small against |z| the layer sums
    stay within 1e-3 of the output; a large epsilon absorbs a visible share."""
    model, x = net
    mask = np.ones((len(x), 5), np.float32)
    for epsilon, close in ((1e-4, True), (1.0, False)):
        ex = lrp_onnx.Explainer(model, composite=Composite(((Family("all"), R.Epsilon(epsilon)),)))
        res, sums, scale = layer_sums(ex, x, mask)
        deviation = max(float(np.abs(s - res.total).max() / np.abs(res.total).max()) for s in sums.values())
        assert (deviation < 1e-3) if close else (deviation > 1e-2), (epsilon, deviation)


def test_nonzero_biases_break_lrp0_conservation_by_the_bias_share():
    """Contrast (one Gemm, LRP-0): sum R_in = sum_k R_k (z_k - b_k) / z_k, the bias keeps its share."""
    layer = LAYERS["gemm"]()
    x = input_for("gemm", 3)
    a = x.reshape(3, -1).astype(np.float64)
    m, b = layer.rho()
    z = a @ m + b
    res = explainer("gemm", "LRP0").explain(x, target=np.ones((3, 5), np.float32))
    assert_close(res.relevance.sum(1), ((z - b) / z * z).sum(1), "bias share")
    assert np.all(np.abs(res.conservation - 1) > 1e-3)
