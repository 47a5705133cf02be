"""Random small networks against a dense numpy LRP, independent of the engine (hypothesis).

A network is drawn stage by stage: Conv (random kernel, strides, asymmetric pads, dilations,
groups), AveragePool, MaxPool, Relu, Concat of a tensor and a conv branch, residual Add
(same shape, or broadcast from a GlobalAveragePool), Add of a constant, Flatten and a Gemm
head; batch 1-4. The test builds it with onnx.helper and, beside it, a dense description:
every linear op is an explicit matrix on the flattened sample (from index arithmetic on the
ONNX definitions), every other op a numpy function. The oracle runs the forward pass and the
relevance pass on that description in float64, with the rule formulas of tests/test_rules.py
(``oracle``: plain matrix algebra), and the engine (float32, onnxruntime) must agree.

Residual Add: R_i = x_i / stab(x_1 + x_2) * R_y, stab(z) = z + 1e-6 sgn(z) (zennit's Norm),
a broadcast summand gets the sum over the broadcast axes; Add of a constant c:
R_x = x / stab(x + c) * R. Concat: R is cut back per input. MaxPool "winner": each output's
relevance to the arg-max of its window; "avg": the rule on the average pool of the window.

Tolerances: the engine computes in float32 and the oracle in float64, so their difference is
float32 rounding amplified by the network's denominators. The oracle is also evaluated in
float32; an example where that deviates from float64 by more than CONDITION of max|reference|
is ill-conditioned (a denominator near zero) and is rejected (``assume``; the explicit
regression cases must be well conditioned). On the others the engine must agree to rtol 1e-4,
atol 1e-4 * max|reference|. That is the float32 envelope of tests/tolerances.py with the
float32 oracle's error bounded by the filter instead of measured per example: the oracle's own
float32 run is within CONDITION = 1e-5 of float64 on every compared example, and the engine,
another float32 implementation of the same function, may be 10 times (K = 4 plus room for the
shallow nets' roundoff floor, <= 8 stages, fan-in <= 75: 8 * sqrt(75) * 2^-24 = 4e-6) that
far; largest error seen on well-conditioned examples: 2e-5. A wrong oracle (Gamma 0.25 ->
0.3) fails it (test_the_tolerance_rejects_a_wrong_gamma).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import Composite, Family, First
from lrp_onnx import rules as R
from test_rules import Dense, maxpool_winner_oracle, oracle, out_size, pool_windows

OPSET = 17
RTOL = 1e-4
ATOL_SCALE = 1e-4
CONDITION = 1e-5
ADD_EPSILON = 1e-6

#: The rules drawn for every layer (ZBox is drawn separately, for the first layer only).
FUZZ_RULES = (
    R.LRP0(), R.Epsilon(0.1), R.Epsilon(1e-3, relative=0.25), R.Gamma(0.25), R.Gamma(1.0, zero_bias=True),
    R.ZPlus(), R.AlphaBeta(2.0, 1.0),
)
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- the dense network


@dataclass
class Step:
    """One op of the dense description: ``kind`` in linear, maxpool, relu, add, concat, flat."""

    kind: str
    inputs: Tuple[str, ...]
    output: str
    layer: Optional[Dense] = None               # linear, maxpool (its average-pool matrix)
    expand: Tuple[Optional[np.ndarray], ...] = ()   # add: per input, a 0/1 broadcast matrix or None
    constant: Optional[np.ndarray] = None       # add of a constant (flattened, broadcast)


@dataclass
class Net:
    """An ONNX graph under construction and its dense description."""

    rng: np.random.Generator
    zero_bias: bool
    nodes: List = field(default_factory=list)
    params: Dict[str, np.ndarray] = field(default_factory=dict)
    steps: List[Step] = field(default_factory=list)
    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes)}"

    def node(self, op: str, inputs, step: Step, shape, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [step.output], name=step.output, **attrs))
        self.steps.append(step)
        self.shapes[step.output] = tuple(shape)
        return step.output

    def param(self, prefix: str, array: np.ndarray) -> str:
        name = self.fresh(prefix)
        self.params[name] = array.astype(np.float32)
        return name

    def bias(self, n: int) -> np.ndarray:
        return np.zeros(n) if self.zero_bias else self.rng.normal(size=n)

    # ---- ops

    def conv(self, x: str, c_out: int, kernel, strides, pads, dilations, group) -> str:
        """y[m, o] = b[m] + sum_{c in group(m), k} x[c, o * s - pad_begin + k * d] W[m, c', k]."""
        c_in, h, w = self.shapes[x]
        weight = self.rng.normal(size=(c_out, c_in // group, *kernel)) / math.sqrt(c_in // group * math.prod(kernel))
        bias = self.bias(c_out)
        out = [out_size(n, k, s, pads[i], pads[i + 2], d) for i, (n, k, s, d) in
               enumerate(zip((h, w), kernel, strides, dilations))]
        m, ci, oh, ow, kh, kw = np.indices((c_out, c_in // group, *out, *kernel)).reshape(6, -1)
        row = oh * strides[0] - pads[0] + kh * dilations[0]
        col = ow * strides[1] - pads[1] + kw * dilations[1]
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        channel = m // (c_out // group) * (c_in // group) + ci
        index = (np.ravel_multi_index((channel[inside], row[inside], col[inside]), (c_in, h, w)),
                 np.ravel_multi_index((m[inside], oh[inside], ow[inside]), (c_out, *out)),
                 np.ravel_multi_index((m[inside], ci[inside], kh[inside], kw[inside]), weight.shape))
        y_shape = (c_out, *out)
        layer = Dense(None, (c_in, h, w), y_shape, weight.astype(np.float32), np.repeat(bias, math.prod(out)),
                      index, channels=c_in)
        names = [x, self.param("W", weight), self.param("b", bias)]
        step = Step("linear", (x,), self.fresh("conv"), layer)
        return self.node("Conv", names, step, y_shape, kernel_shape=list(kernel), strides=list(strides),
                         pads=list(pads), dilations=list(dilations), group=group)

    def gemm(self, x: str, n: int, trans_b: int) -> str:
        """Y = X @ op(B) + C; the dense matrix is op(B) itself."""
        (k,) = self.shapes[x]
        weight = self.rng.normal(size=(n, k) if trans_b else (k, n)) / math.sqrt(k)
        rows, cols = np.indices((k, n)).reshape(2, -1)
        widx = cols * k + rows if trans_b else rows * n + cols
        layer = Dense(None, (k,), (n,), weight.astype(np.float32), self.bias(n), (rows, cols, widx), channels=k)
        names = [x, self.param("W", weight), self.param("b", layer.bias)]
        return self.node("Gemm", names, Step("linear", (x,), self.fresh("gemm"), layer), (n,), transB=trans_b)

    def pool(self, x: str, op: str, kernel, strides, pads, count_include_pad=0) -> str:
        """AveragePool (or MaxPool) with its average matrix M[i, o] = 1/d_o over window(o)."""
        shape = self.shapes[x]
        out, windows = pool_windows(shape, kernel, strides, pads)
        y_shape = (shape[0], *out)
        matrix = np.zeros((math.prod(shape), math.prod(y_shape)))
        for o, members in windows:
            matrix[members, o] = 1.0 / (math.prod(kernel) if count_include_pad else len(members))
        layer = Dense(None, shape, y_shape, fixed=matrix, channels=shape[0], windows=tuple(windows))
        attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads))
        if op == "AveragePool":
            attrs["count_include_pad"] = count_include_pad
        step = Step("linear" if op == "AveragePool" else "maxpool", (x,), self.fresh(op.lower()), layer)
        return self.node(op, [x], step, y_shape, **attrs)

    def global_average_pool(self, x: str) -> str:
        c, h, w = self.shapes[x]
        matrix = np.kron(np.eye(c), np.full((h * w, 1), 1.0 / (h * w)))
        layer = Dense(None, (c, h, w), (c, 1, 1), fixed=matrix, channels=c)
        return self.node("GlobalAveragePool", [x], Step("linear", (x,), self.fresh("gap"), layer), (c, 1, 1))

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], Step("relu", (x,), self.fresh("relu")), self.shapes[x])

    def flatten(self, x: str) -> str:
        return self.node("Flatten", [x], Step("flat", (x,), self.fresh("flat")), (math.prod(self.shapes[x]),))

    def concat(self, xs: List[str]) -> str:
        """Along the channel axis, the outermost axis of a flattened sample."""
        shape = (sum(self.shapes[x][0] for x in xs), *self.shapes[xs[0]][1:])
        return self.node("Concat", xs, Step("concat", tuple(xs), self.fresh("concat")), shape, axis=1)

    def add(self, x: str, other: str) -> str:
        """x + other, other of shape (C, 1, 1) or x's shape (broadcast by a 0/1 matrix)."""
        shape = self.shapes[x]
        expand = tuple(broadcast_matrix(self.shapes[t], shape) for t in (x, other))
        return self.node("Add", [x, other], Step("add", (x, other), self.fresh("add"), expand=expand), shape)

    def add_constant(self, x: str) -> str:
        c, h, w = self.shapes[x]
        value = self.rng.normal(size=(c, 1, 1))
        step = Step("add", (x,), self.fresh("addc"), constant=np.repeat(value.ravel(), h * w))
        return self.node("Add", [x, self.param("c", value)], step, self.shapes[x])

    def model(self, x_shape, output: str):
        graph = helper.make_graph(
            self.nodes, "fuzz",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", *self.shapes[output]])],
            [numpy_helper.from_array(v, k) for k, v in self.params.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def broadcast_matrix(small, big) -> Optional[np.ndarray]:
    """E with x_small @ E = x_small broadcast to ``big`` (flattened); None for equal shapes."""
    if tuple(small) == tuple(big):
        return None
    index = np.broadcast_to(np.arange(math.prod(small)).reshape(small), big).ravel()
    return (index[None, :] == np.arange(math.prod(small))[:, None]).astype(np.float64)


# --------------------------------------------------------------------------- the dense oracle


def stab(z):
    """z + 1e-6 sgn(z), sgn(0) = +1 (zennit's Norm)."""
    return z + ADD_EPSILON * np.where(z >= 0, 1.0, -1.0)


def forward(net: Net, x: np.ndarray, dtype) -> Dict[str, np.ndarray]:
    """Every tensor of the dense description, flattened per sample, in ``dtype``."""
    values = {"x": x.reshape(len(x), -1).astype(dtype)}
    for step in net.steps:
        a = [values[t] for t in step.inputs]
        if step.kind == "linear":
            m, b = step.layer.rho()
            out = a[0] @ m.astype(dtype) + b.astype(dtype)
        elif step.kind == "maxpool":
            out = np.stack([a[0][:, members].max(axis=1) for _, members in step.layer.windows], axis=1)
        elif step.kind == "relu":
            out = np.maximum(a[0], 0)
        elif step.kind == "flat":
            out = a[0]
        elif step.kind == "concat":
            out = np.concatenate(a, axis=1)
        elif step.constant is not None:
            out = a[0] + step.constant.astype(dtype)
        else:
            out = sum(v if e is None else v @ e.astype(dtype) for v, e in zip(a, step.expand))
        values[step.output] = out
    return values


def relevance(net: Net, values, mask: np.ndarray, rules: Dict[str, R.Rule], maxpool: str, dtype) -> np.ndarray:
    """The input relevance: R = output * mask at the top, then every step in reverse order;
    a tensor used twice gets the sum of both relevances."""
    output = net.steps[-1].output
    incoming: Dict[str, List[np.ndarray]] = {output: [values[output] * mask.astype(dtype)]}
    for step in reversed(net.steps):
        r = sum(incoming.pop(step.output))
        a = [values[t] for t in step.inputs]
        if step.kind == "linear" or (step.kind == "maxpool" and maxpool == "avg"):
            parts = [oracle(rules[step.output], step.layer, a[0], r, np.ones_like(r), dtype)]
        elif step.kind == "maxpool":
            parts = [maxpool_winner_oracle(step.layer, a[0], r)]
        elif step.kind in ("relu", "flat"):
            parts = [r]
        elif step.kind == "concat":
            parts = np.split(r, np.cumsum([v.shape[1] for v in a])[:-1], axis=1)
        else:
            s = r / stab(values[step.output])
            parts = [v * s if e is None else v * (s @ e.T.astype(dtype)) for v, e in zip(a, step.expand or (None,))]
        for t, part in zip(step.inputs, parts):
            incoming.setdefault(t, []).append(part)
    return sum(incoming["x"])


# --------------------------------------------------------------------------- drawing networks


def build(spec) -> Tuple[Net, object]:
    """(Net, ONNX model) from a spec: (seed, zero_bias, input shape, [(Net method, args)])."""
    seed, zero_bias, x_shape, ops = spec
    net = Net(np.random.default_rng(seed), zero_bias)
    net.shapes["x"] = tuple(x_shape)
    for method, args in ops:
        getattr(net, method)(*args)
    return net, net.model(x_shape, net.steps[-1].output)


class Drawer:
    """Draws ops valid for the current shapes, applying each to a Net and recording it."""

    def __init__(self, draw, net: Net):
        self.draw, self.net, self.ops = draw, net, []

    def apply(self, method: str, *args) -> str:
        self.ops.append((method, args))
        return getattr(self.net, method)(*args)

    def int(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def conv(self, x: str, same: bool = False) -> str:
        """A Conv with random geometry; ``same``: stride 1 and the input's shape."""
        c_in, *spatial = self.net.shapes[x]
        if same:
            k = self.draw(st.sampled_from([1, 3]))
            return self.apply("conv", x, c_in, (k, k), (1, 1), (k // 2,) * 4, (1, 1), 1)
        group = self.draw(st.sampled_from([g for g in (1, 2, 3) if c_in % g == 0]))
        c_out = group * self.int(1, 4 // group or 1)
        kernel, strides, dilations, begin, end = [], [], [], [], []
        for n in spatial:
            pad_max = 2 if n < 7 else 0
            pb, pe, k, d = self.int(0, pad_max), self.int(0, pad_max), self.int(1, 3), self.int(1, 2)
            if (k - 1) * d + 1 > n + pb + pe:
                k, d = min(k, n + pb + pe), 1
            kernel.append(k), dilations.append(d), strides.append(self.int(1, 2)), begin.append(pb), end.append(pe)
        return self.apply("conv", x, c_out, tuple(kernel), tuple(strides), tuple(begin + end), tuple(dilations), group)

    def pool(self, x: str, op: str) -> str:
        spatial = self.net.shapes[x][1:]
        kernel = [self.int(1, min(3, n)) for n in spatial]
        strides = [self.int(1, 2) for _ in spatial]
        pads = [self.int(0, k - 1) for k in kernel] + [self.int(0, k - 1) for k in kernel]
        extra = (self.int(0, 1),) if op == "AveragePool" else ()
        return self.apply("pool", x, op, tuple(kernel), tuple(strides), tuple(pads), *extra)


@st.composite
def network_specs(draw, residual: bool = False, zero_bias: bool = False):
    """A random network: a first Conv and one to four stages (or Flatten + Gemm), a Gemm head."""
    x_shape = (draw(st.integers(1, 3)), draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    net = Net(np.random.default_rng(seed), zero_bias)
    net.shapes["x"] = x_shape
    d = Drawer(draw, net)
    if draw(st.integers(0, 3)):   # 3 in 4: a conv net
        t = d.conv("x")
        kinds = ["conv", "relu", "avgpool", "maxpool", "concat"]
        if residual:
            kinds += ["residual", "residual_gap"] + ([] if zero_bias else ["add_constant"])
        for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=4)):
            if kind == "conv":
                t = d.conv(t)
            elif kind == "relu":
                t = d.apply("relu", t)
            elif kind in ("avgpool", "maxpool"):
                t = d.pool(t, "AveragePool" if kind == "avgpool" else "MaxPool")
            elif kind == "concat" and net.shapes[t][0] <= 4:
                t = d.apply("concat", [t, d.apply("relu", d.conv(t, same=True))])
            elif kind == "residual":
                t = d.apply("add", t, d.apply("relu", d.conv(t, same=True)))
            elif kind == "residual_gap":
                t = d.apply("add", t, d.apply("global_average_pool", d.apply("relu", d.conv(t, same=True))))
            elif kind == "add_constant":
                # right after a Conv the constant is that Conv's bias (canonicalize.fold_affine
                # folds it, and the rules see one layer): the Add's own split is tested behind a Relu
                if d.ops[-1][0] == "conv":
                    t = d.apply("relu", t)
                t = d.apply("add_constant", t)
        t = d.apply("flatten", t)
    else:
        t = d.apply("relu", d.apply("gemm", d.apply("flatten", "x"), d.int(2, 8), d.int(0, 1)))
    if draw(st.booleans()):
        t = d.apply("relu", d.apply("gemm", t, d.int(2, 6), d.int(0, 1)))
    d.apply("gemm", t, d.int(2, 5), d.int(0, 1))
    return seed, zero_bias, x_shape, d.ops


@st.composite
def cases(draw, residual: bool = False):
    """A network spec, a batch size, a rule (optionally ZBox on the first layer), a MaxPool
    mode, a target and the seed of the input x ~ U(-1, 1) (continuous: no ties in a max)."""
    return dict(spec=draw(network_specs(residual)), batch=draw(st.integers(1, 4)),
                rule=draw(st.integers(0, len(FUZZ_RULES) - 1)), zbox=draw(st.sampled_from([None, "scalar", "channel"])),
                maxpool=draw(st.sampled_from(["winner", "avg"])), target=draw(st.sampled_from(["predicted", "all", 0])),
                x_seed=draw(st.integers(0, 2 ** 32 - 1)))


# --------------------------------------------------------------------------- checks


def rules_of(net: Net, rule: R.Rule, zbox: Optional[R.ZBox]) -> Dict[str, R.Rule]:
    """The rule of each layer: ``zbox`` on the first Conv/Gemm, ``rule`` on the others."""
    layers = [s for s in net.steps if s.kind in ("linear", "maxpool")]
    first = next(s.output for s in layers if s.layer.weight is not None)
    return {s.output: zbox if zbox and s.output == first else rule for s in layers}


def zbox_rule(kind: Optional[str], channels: int) -> Optional[R.ZBox]:
    """Bounds that contain x ~ U(-1, 1): [-1, 1], or per channel slightly wider."""
    if kind is None:
        return None
    if kind == "scalar":
        return R.ZBox(-1.0, 1.0)
    return R.ZBox(tuple(-1.0 - 0.1 * np.arange(channels)), tuple(1.0 + 0.05 * np.arange(channels)))


def check_against_oracle(case, oracle_rule=None) -> bool:
    """The engine's output and input relevance against the dense oracle (module docstring);
    False for an ill-conditioned case, where the relevance is not compared. ``oracle_rule``:
    another rule for the oracle only (a wrong variant, which must fail)."""
    net, model = build(case["spec"])
    first = next(s for s in net.steps if s.kind == "linear" and s.layer.weight is not None)
    zbox = zbox_rule(case["zbox"], first.layer.channels)
    rule = FUZZ_RULES[case["rule"]]
    composite = Composite((((First(Family("linear")), zbox),) if zbox else ()) + ((Family("all"), rule),),
                          maxpool=case["maxpool"])
    batch = case["batch"]
    x = np.random.default_rng(case["x_seed"]).uniform(-1, 1, size=(batch, *net.shapes["x"])).astype(np.float32)
    target = None if case["target"] == "predicted" else (
        np.ones((batch, *net.shapes[net.steps[-1].output]), np.float32) if case["target"] == "all" else case["target"])
    res = lrp_onnx.Explainer(model, composite=composite).explain(x, target=target)

    values = forward(net, x, np.float64)
    output = values[net.steps[-1].output]
    scale_out = float(np.abs(output).max())
    np.testing.assert_allclose(res.output.reshape(batch, -1), output, rtol=RTOL, atol=ATOL_SCALE * scale_out,
                               err_msg="the dense description disagrees with onnxruntime's forward pass")
    mask = np.zeros_like(output)
    mask[np.arange(batch), res.target] = 1.0 if target is None or np.ndim(target) == 0 else 0.0
    if isinstance(target, np.ndarray):
        mask = target.reshape(batch, -1).astype(np.float64)
    rules = rules_of(net, oracle_rule or rule, zbox)
    reference = relevance(net, values, mask, rules, case["maxpool"], np.float64)
    single = relevance(net, forward(net, x, np.float32), mask, rules, case["maxpool"], np.float32)
    scale = float(np.abs(reference).max()) or 1.0
    if np.abs(single - reference).max() > CONDITION * scale:
        return False
    np.testing.assert_allclose(res.relevance.reshape(batch, -1), reference, rtol=RTOL, atol=ATOL_SCALE * scale,
                               err_msg=f"{rule} / ZBox {case['zbox']} / maxpool {case['maxpool']}")
    return True


@pytest.mark.parametrize("residual", [pytest.param(False, id="plain"), pytest.param(True, id="residual")])
@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_random_networks_match_the_dense_oracle(residual, data):
    assume(check_against_oracle(data.draw(cases(residual), label="case")))


@pytest.mark.parametrize("residual", [pytest.param(False, id="plain"), pytest.param(True, id="residual")])
@settings(FUZZ, max_examples=100)
@given(data=st.data(), batch=st.integers(1, 4), maxpool=st.sampled_from(["winner", "avg"]),
       target=st.sampled_from([None, "all"]), x_seed=st.integers(0, 2 ** 32 - 1))
def test_lrp0_with_zero_biases_conserves_the_relevance_sum(residual, data, batch, maxpool, target, x_seed):
    """Without biases (and without Adds of constants) LRP-0 conserves (Montavon et al. 2019,
    eq. 2): sum R_in = the relevance put on the output, to float32 summation error
    (1e-4 of sum |R_in|, the scale of the cancellations)."""
    net, model = build(data.draw(network_specs(residual, zero_bias=True), label="spec"))
    x = np.random.default_rng(x_seed).uniform(-1, 1, size=(batch, *net.shapes["x"])).astype(np.float32)
    ex = lrp_onnx.Explainer(model, composite=Composite(((Family("all"), R.LRP0()),), maxpool=maxpool))
    mask = None if target is None else np.ones((batch, *net.shapes[net.steps[-1].output]), np.float32)
    res = ex.explain(x, target=mask)
    summed = res.relevance.reshape(batch, -1).sum(1, dtype=np.float64)
    scale = np.abs(res.relevance).reshape(batch, -1).sum(1, dtype=np.float64)
    np.testing.assert_allclose(summed, res.total, rtol=1e-4, atol=1e-4 * scale.max())


#: Explicit networks kept as regression tests: hostile geometry (outputs entirely in the
#: padding, dilated and strided kernels with uncovered tails, pads of a pool on both sides,
#: groups of 3) and every merge (residual, broadcast residual, constant, concat).
REGRESSION_SPECS = {
    "padding_only_outputs": (11, False, (3, 4, 5), [
        ("conv", ("x", 3, (1, 2), (2, 1), (2, 0, 2, 1), (1, 2), 3)), ("relu", ("conv0",)),
        ("pool", ("relu1", "MaxPool", (3, 2), (2, 2), (1, 0, 2, 1))), ("flatten", ("maxpool2",)),
        ("gemm", ("flat3", 4, 0))]),
    "merges": (12, False, (2, 3, 3), [
        ("conv", ("x", 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2)),
        ("conv", ("conv0", 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)), ("relu", ("conv1",)),
        ("add", ("conv0", "relu2")),
        ("conv", ("add3", 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)), ("relu", ("conv4",)),
        ("global_average_pool", ("relu5",)), ("add", ("add3", "gap6")), ("add_constant", ("add7",)),
        ("conv", ("addc8", 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)), ("relu", ("conv9",)),
        ("concat", (["addc8", "relu10"],)), ("pool", ("concat11", "AveragePool", (2, 2), (1, 1), (1, 0, 0, 1), 1)),
        ("flatten", ("averagepool12",)), ("gemm", ("flat13", 3, 1))]),
}


@pytest.mark.parametrize("maxpool", ["winner", "avg"])
@pytest.mark.parametrize("rule", range(len(FUZZ_RULES)), ids=lambda i: type(FUZZ_RULES[i]).__name__ + str(i))
@pytest.mark.parametrize("spec", REGRESSION_SPECS)
def test_regression_networks_match_the_dense_oracle(spec, rule, maxpool):
    case = dict(spec=REGRESSION_SPECS[spec], batch=3, rule=rule, zbox="channel", maxpool=maxpool, target="all", x_seed=1)
    assert check_against_oracle(case), "ill-conditioned case: change its x_seed"


@pytest.mark.parametrize("spec", REGRESSION_SPECS)
def test_the_tolerance_rejects_a_wrong_gamma(spec):
    """The engine's Gamma(0.25) against an oracle with Gamma(0.3): the comparison fails."""
    case = dict(spec=REGRESSION_SPECS[spec], batch=3, rule=3, zbox="channel", maxpool="winner", target="all", x_seed=1)
    assert isinstance(FUZZ_RULES[3], R.Gamma) and check_against_oracle(case)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check_against_oracle(case, oracle_rule=R.Gamma(0.3))
