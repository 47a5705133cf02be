"""The four LRP steps for any linear-type layer (Montavon et al. 2019, section 10.2.2):

    1. z = incr(f(a; rho(W), rho(b)))      forward through rho-modified copies (the branches)
    2. s = R / z
    3. c = f^T(s; rho(W))                   the transposed op
    4. R_in = a * c

One function, ``propagate_linear``, serves Gemm, MatMul, Conv and the pooling layers: each
handler describes its layer as a ``LinearLayer`` (how to run f on a modified input with
modified parameters, and how to run f^T) and the rule's terms do the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx

from .. import rules as R
from ..errors import CompositeError
from .bounds import layer_bound


@dataclass
class LinearLayer:
    """A layer f(a; W, b) = z as seen by a rule.

    forward(x, weight, bias) -> name of f(x; weight, bias) (weight/bias: initializer names or None)
    transpose(s, weight) -> name of f^T(s; weight), shaped like the layer input
    weight_name, bias_name: the parameters' initializers (None for pooling); their values are
    read only when a rule modifies them
    reuse_output: the node's output equals forward(a; W, b), so step 1 of LRP-0/epsilon
    reuses it instead of running the layer again
    """

    node_name: str
    input: str
    output: str
    forward: Callable[[str, Optional[str], Optional[str]], str]
    transpose: Callable[[str, Optional[str]], str]
    weight_name: Optional[str] = None
    bias_name: Optional[str] = None
    reuse_output: bool = True


#: Input modifiers that feed a constant (one sample, broadcast over the batch) to f.
CONSTANT_INPUTS = (R.LOW, R.HIGH, R.ONES)


class _Branches:
    """Caches the modified inputs, parameters and forward outputs of one layer."""

    def __init__(self, ctx, layer: LinearLayer, rule):
        self.ctx, self.layer, self.rule = ctx, layer, rule
        self.nonnegative = ctx.nonnegative(layer.input)
        self._inputs: Dict[str, Tuple[str, Optional[str]]] = {}
        self._params: Dict[R.ParamMod, Tuple[Optional[str], Optional[str]]] = {}
        self._outputs: Dict[Tuple[str, R.ParamMod], str] = {}

    def drops(self, branch: R.Branch) -> bool:
        """A branch on min(0, a) of a non-negative a is exactly zero."""
        return self.nonnegative and branch.input == R.NEGATIVE

    def normalized(self, branch: R.Branch) -> Tuple[str, R.ParamMod]:
        """(input modifier, parameter modifier) as they act on this layer: max(0, a) is a itself
        for a non-negative a, and a layer without parameters ignores parameter modifiers."""
        kind = R.IDENTITY if branch.input == R.POSITIVE and self.nonnegative else branch.input
        return kind, (branch.params if self.layer.weight_name is not None else R.ParamMod())

    def input(self, kind: str) -> Tuple[str, Optional[str]]:
        """(tensor fed to f, factor multiplying f^T in step 4; None for ones)."""
        if kind not in self._inputs:
            self._inputs[kind] = self._make_input(kind)
        return self._inputs[kind]

    def _make_input(self, kind):
        b, a = self.ctx.builder, self.layer.input
        if kind == R.IDENTITY:
            return a, a
        if kind == R.POSITIVE:
            x = b.op("Relu", [a], "a_pos")
            return x, x
        if kind == R.NEGATIVE:
            x = b.op("Min", [a, b.const(0.0)], "a_neg")
            return x, x
        # constant inputs are one sample, broadcast over the batch later: f of a constant is
        # a constant that onnxruntime folds at session creation instead of running per batch
        if kind in (R.LOW, R.HIGH):
            other = getattr(self.rule, R.HIGH if kind == R.LOW else R.LOW)
            bound = layer_bound(self.ctx, self.layer.node_name, self.layer.input, getattr(self.rule, kind), kind,
                                self.rule.tensor, other=other)
            sample = (1,) + self.ctx.graph.static_shape(a)
            return b.const(np.broadcast_to(bound, sample), kind), b.const(bound, kind)
        if kind == R.ONES:
            dims = self.ctx.graph.shape(a)[1:]
            if all(isinstance(d, int) for d in dims):
                return b.const(np.ones((1,) + tuple(dims), np.float32), "ones"), None
            # dynamic sizes: the ones are built at run time
            dims = b.op("Slice", [self.ctx.shape_of(a), b.const([1], "from_1", np.int64),
                                  b.const([np.iinfo(np.int64).max], "to_end", np.int64)], "sample_dims")
            sample = b.op("Concat", [b.const([1], "one_sample", np.int64), dims], "sample_shape", axis=0)
            return b.op("ConstantOfShape", [sample], "ones", value=onnx.helper.make_tensor("one", 1, [1], [1.0])), None
        raise ValueError(f"unknown input modifier {kind!r}")

    def params(self, mod: R.ParamMod) -> Tuple[Optional[str], Optional[str]]:
        """Initializer names of rho(W), rho(b), computed once per modifier (zero bias -> None)."""
        if mod not in self._params:
            layer, b = self.layer, self.ctx.builder
            if layer.weight_name is None:   # pooling: no parameters to modify
                self._params[mod] = (None, None)
            elif mod == R.ParamMod():
                self._params[mod] = (layer.weight_name, layer.bias_name)
            else:
                constant = self.ctx.graph.constant
                bias = mod.apply_bias(None if layer.bias_name is None else constant(layer.bias_name))
                self._params[mod] = (
                    b.const(mod.apply(constant(layer.weight_name)), "rho_w"),
                    None if bias is None else b.const(bias, "rho_b"),
                )
        return self._params[mod]

    def output(self, branch: R.Branch) -> str:
        """f(in(a); rho(W), rho(b)); the node's own output when nothing is modified."""
        key = self.normalized(branch)
        if key not in self._outputs:
            if key == (R.IDENTITY, R.ParamMod()) and self.layer.reuse_output:
                self._outputs[key] = self.layer.output
            else:
                weight, bias = self.params(key[1])
                self._outputs[key] = self.layer.forward(self.input(key[0])[0], weight, bias)
        return self._outputs[key]


def _signed_sum(builder, parts: List[Tuple[float, str]]) -> str:
    """sum_b sign_b * out_b."""
    z = None
    for sign, out in parts:
        if z is None:
            z = out if sign > 0 else builder.op("Neg", [out], "z")
        else:
            z = builder.op("Add" if sign > 0 else "Sub", [z, out], "z")
    return z


def stabilize(builder, z: str, stab: R.Stabilizer, rank: int, sign: Optional[str] = None) -> str:
    """incr(z) = z + (epsilon + relative * rms(z)) * sgn(z)  (see rules.Stabilizer); the rms
    is taken over each sample (all axes but the batch axis 0). ``sign`` (see ``_z_sign``) lets
    sgn(z) go: "nonnegative": sgn(z) = 1; "positive_where_used": z > 0 wherever the relevance
    is not zero, so max(z, 0) + eps is incr(z) there and a safe denominator elsewhere."""
    eps = builder.const(stab.epsilon) if stab.epsilon else None
    if stab.relative:
        square = builder.op("Mul", [z, z], "z_sq")
        rms = builder.op("Sqrt", [builder.reduce("ReduceMean", square, range(1, rank))], "z_rms")
        scaled = builder.op("Mul", [rms, builder.const(stab.relative)], "eps_rel")
        eps = builder.op("Add", [scaled, eps], "eps") if eps else scaled
    if eps is None:
        return z
    if stab.signed and sign == "positive_where_used":
        z = builder.op("Max", [z, builder.const(0.0)], "z_pos")
    elif stab.signed and sign != "nonnegative":   # eps * sgn(z) = 2 eps [z >= 0] - eps, exactly (Where is slow on CPU)
        step = builder.op("Cast", [builder.op("GreaterOrEqual", [z, builder.const(0.0)], "z_ge0")], "z_step", to=1)
        if stab.relative:
            eps = builder.op("Mul", [eps, builder.op("Sub", [builder.op("Mul", [step, builder.const(2.0)], "sgn_z"),
                                                                builder.const(1.0)], "sgn_z")], "eps_sgn")
        else:
            eps = builder.op("Sub", [builder.op("Mul", [step, builder.const(2 * stab.epsilon)], "eps_sgn"), eps], "eps_sgn")
    return builder.op("Add", [z, eps], "z_stab")


def implies_zeros(ctx, relevance_in: str, tensor_in: str, relevance_out: str, tensor_out: str) -> None:
    """Record for ``vanishes_where_zero``: ``relevance_in`` is 0 wherever ``tensor_in`` is 0
    if ``relevance_out`` is 0 wherever ``tensor_out`` is 0 (a handler's R_in from its R_out)."""
    ctx.builder.implied[relevance_in] = (tensor_in, relevance_out, tensor_out)


def vanishes_where_zero(ctx, relevance: str, tensor: str, depth: int = 16) -> bool:
    """True when the built tensor ``relevance`` is provably 0 wherever the forward tensor
    ``tensor`` is 0: it is a product with ``tensor`` (step 4, R_in = a * c), a sum of such,
    or follows from a recorded implication. False when not provable."""
    if relevance == tensor:
        return True
    implied = ctx.builder.implied.get(relevance)
    if implied is not None and implied[0] == tensor:
        return vanishes_where_zero(ctx, implied[1], implied[2], depth - 1)
    node = ctx.builder.producer.get(relevance)
    if node is None or depth == 0 or node.op_type not in ("Mul", "Sum", "Add", "Sub", "Neg", "Relu", "Abs"):
        return False
    inputs = (vanishes_where_zero(ctx, name, tensor, depth - 1) for name in node.input)
    return any(inputs) if node.op_type == "Mul" else all(inputs)


def _rectified(ctx, output: str, relevance: str) -> bool:
    """True when ``relevance`` is 0 wherever the layer output z <= 0: it vanishes where
    Relu(z) does (zennit's and the tutorial's VGG and ResNet convolutions: the generalised
    Gamma rule's z < 0 term is then exactly zero)."""
    producer = ctx.graph.producer.get(output)
    if producer is None or producer not in ctx.graph.dag:
        return False
    return any(ctx.graph.nodes[n].op_type == "Relu" and ctx.graph.nodes[n].input[0] == output
               and vanishes_where_zero(ctx, relevance, ctx.graph.nodes[n].output[0])
               for n in ctx.graph.dag.successors(producer) if n in ctx.graph.nodes)


#: Parameter modifiers that make weights and biases >= 0 (rules.ParamMod kinds).
_NONNEGATIVE_PARAMS = ("positive", "square", "ones")


def _branch_nonnegative(branches: _Branches, branch: R.Branch) -> bool:
    """f(in(a); rho(W), rho(b)) >= 0 everywhere: a non-negative input through non-negative
    weights and bias, or a non-positive input through non-positive weights without bias.
    Layers without parameters (pooling, Reduce*) have fixed non-negative weights."""
    kind, mod = branches.normalized(branch)
    positive_in = kind in (R.POSITIVE, R.ONES) or (kind == R.IDENTITY and branches.nonnegative)
    if branches.layer.weight_name is None:
        return positive_in
    no_bias = mod.zero_bias or branches.layer.bias_name is None
    return (positive_in and mod.kind in _NONNEGATIVE_PARAMS) or (kind == R.NEGATIVE and mod.kind == "negative" and no_bias)


def _z_sign(branches: _Branches, rule, term: R.Term, kept, rectified: bool) -> Optional[str]:
    """What is known of the sign of a term's z, for ``stabilize``: "nonnegative" when every
    branch is (z+, Flat, w^2 on their usual inputs); "positive_where_used" when the relevance
    is used only where the layer's own z > 0 (``rectified``, or the term's positive output
    mask) and this z is at least the layer's z: the layer itself (LRP-0, epsilon), or the
    positive term of Gamma with its bias (z + gamma (a+ w+ + b+ + a- w-) >= z)."""
    if all(br.sign > 0 and _branch_nonnegative(branches, br) for br in kept):
        return "nonnegative"
    only_where_positive = term.output_mask == "positive" or (rectified and term.output_mask is None)
    itself = len(kept) == 1 and branches.normalized(kept[0]) == (R.IDENTITY, R.ParamMod()) and kept[0].sign > 0
    gamma_up = isinstance(rule, R.Gamma) and not rule.zero_bias and term.output_mask == "positive"
    return "positive_where_used" if only_where_positive and (itself or gamma_up) else None


def propagate_linear(ctx, layer: LinearLayer, rule, relevance: str) -> str:
    """R_in of ``layer`` under ``rule`` given the relevance of its output (steps 1-4)."""
    if isinstance(rule, R.Gradient):   # the layer's vector-Jacobian product (ops/gradient.py)
        return layer.transpose(relevance, layer.weight_name)
    b = ctx.builder
    terms = rule.terms()
    if not terms:   # Pass
        if ctx.graph.static_shape(layer.input) != ctx.graph.static_shape(layer.output):
            raise CompositeError(f"rule Pass on {layer.node_name!r} needs equal input and output shapes")
        return relevance
    branches = _Branches(ctx, layer, rule)
    rectified = _rectified(ctx, layer.output, relevance)
    if (isinstance(rule, R.Gamma) and layer.weight_name is not None and not branches.nonnegative
            and not (rule.zero_bias and layer.bias_name is not None)):
        return _gamma_by_magnitudes(ctx, layer, rule, relevance, branches, rectified)
    positive: List[str] = []
    negative: List[str] = []
    for term in terms:
        kept = [br for br in term.branches if not branches.drops(br)]
        if not kept or (rectified and term.output_mask == "negative"):   # s = R [z < 0] / z = 0
            continue
        # step 1: z of this term; the branches on constant inputs summed apart, into one
        # constant that onnxruntime folds
        fixed = [(br.sign, branches.output(br)) for br in kept if br.input in CONSTANT_INPUTS]
        varying = [(br.sign, branches.output(br)) for br in kept if br.input not in CONSTANT_INPUTS]
        z = _signed_sum(b, varying + ([(1.0, _signed_sum(b, fixed))] if fixed else []))
        # every LinearLayer's forward keeps the rank of its input (Reduce* keep their dims there)
        denominator = stabilize(b, z, term.stabilizer, len(ctx.graph.shape(layer.input)),
                                 _z_sign(branches, rule, term, kept, rectified))
        # step 2: s = mask * R / z
        upper = relevance
        if term.output_mask and not rectified:   # when rectified, R [z > 0] = R
            original = branches.output(R.Branch())
            test = "Greater" if term.output_mask == "positive" else "Less"
            mask = b.op("Cast", [b.op(test, [original, b.const(0.0)], "out_sign")], "out_mask", to=1)
            upper = b.op("Mul", [relevance, mask], "r_masked")
        s = b.op("Div", [upper, denominator], "s")
        if denominator == z:   # no stabilizer: 0/0 := 0 where z vanishes (a dead unit)
            s = b.op("Where", [b.op("Equal", [z, b.const(0.0)], "z_zero"), b.const(0.0), s], "s")
        # steps 3 and 4, per branch
        for br in kept:
            kind, mod = branches.normalized(br)
            c = layer.transpose(s, branches.params(mod)[0])
            _, factor = branches.input(kind)
            contribution = c if factor is None else b.op("Mul", [factor, c], "r_in")
            if term.coefficient not in (1.0, -1.0):
                contribution = b.op("Mul", [contribution, b.const(abs(term.coefficient))], "r_coef")
            (positive if br.sign * term.coefficient > 0 else negative).append(contribution)
    result = b.sum(positive, "r_in") if positive else None
    if negative:
        neg = b.sum(negative, "r_neg")
        result = b.op("Sub", [result, neg], "r_in") if result else b.op("Neg", [neg], "r_in")
    if result is None:   # every branch vanished (cannot happen for the built-in rules)
        raise CompositeError(f"rule {rule} leaves no branch on {layer.node_name!r}")
    return result


def _gamma_by_magnitudes(ctx, layer: LinearLayer, rule, relevance: str, branches: _Branches, rectified: bool) -> str:
    """The generalised Gamma rule (rules.Gamma) on a layer with a signed input in three passes of
    f instead of eight. With a+ = max(a, 0), a- = min(a, 0), w+- likewise, g = gamma, the identities
    a+ w+ + a- w- = (a w + |a| |w|) / 2 and a+ w- + a- w+ = (a w - |a| |w|) / 2 give the two terms'
    z from the layer's own output z = a w + b and one pass V = f(|a|; (g/2) |w|, (g/2) |b|):

        z_pos = (1 + g/2) z + V,        z_neg = (1 + g/2) z - V

    and, with s_pos = R [z > 0] / stab(z_pos), s_neg = R [z < 0] / stab(z_neg), S = s_pos + s_neg,
    D = s_pos - s_neg, the four transposed passes of the branches sum to two:

        R_in = a * f^T(S; (1 + g/2) w) + |a| * f^T(D; (g/2) |w|)

    (the a+ factor is (1 + g/2) S w + (g/2) D |w|, the a- factor (1 + g/2) S w - (g/2) D |w|).
    Equal to the branch-by-branch rule up to float32 rounding (tests/test_fast_paths.py); the
    stabilizer, the output masks and the rectified case are the generic ones."""
    b, g = ctx.builder, rule.gamma
    constant = ctx.graph.constant
    half_abs_w = b.const(g / 2 * np.abs(constant(layer.weight_name)), "w_gamma_abs")
    half_abs_b = None if layer.bias_name is None else b.const(g / 2 * np.abs(constant(layer.bias_name)), "b_gamma_abs")
    abs_a = b.op("Abs", [layer.input], "a_abs")
    v = layer.forward(abs_a, half_abs_w, half_abs_b)
    original = branches.output(R.Branch())
    scaled = b.op("Mul", [original, b.const(1 + g / 2)], "z_gamma")
    rank = len(ctx.graph.shape(layer.input))
    s = {}
    for term in rule.terms():
        if rectified and term.output_mask == "negative":   # s = R [z < 0] / z = 0
            continue
        z = b.op("Add" if term.output_mask == "positive" else "Sub", [scaled, v], "z")
        denominator = stabilize(b, z, term.stabilizer, rank, _z_sign(branches, rule, term, list(term.branches), rectified))
        upper = relevance
        if not rectified:
            test = "Greater" if term.output_mask == "positive" else "Less"
            mask = b.op("Cast", [b.op(test, [original, b.const(0.0)], "out_sign")], "out_mask", to=1)
            upper = b.op("Mul", [relevance, mask], "r_masked")
        s[term.output_mask] = b.op("Div", [upper, denominator], "s")
    if "negative" in s:
        total, difference = (b.op(op, [s["positive"], s["negative"]], "s_gamma") for op in ("Add", "Sub"))
    else:
        total = difference = s["positive"]
    scaled_w = b.const((1 + g / 2) * constant(layer.weight_name), "w_gamma")
    return b.op("Add", [b.op("Mul", [layer.input, layer.transpose(total, scaled_w)], "r_in"),
                        b.op("Mul", [abs_a, layer.transpose(difference, half_abs_w)], "r_in")], "r_in")

