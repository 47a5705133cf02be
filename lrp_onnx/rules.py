"""LRP rules as small immutable values.

A rule knows nothing about ONNX. It describes the generalised rule of Montavon et al. (2019),
eq. (10)-(12), in the "branches" form that zennit uses: every linear-type layer
``z_k = sum_j a_j w_jk + b_k`` is evaluated on modified copies ("branches") of its input and
parameters; the relevance is

    z     = sum_b  sign_b * f(in_b(a); param_b(W), param_b(b))      (one z per term)
    s     = mask * R_out / stabilize(z)
    R_in  = sum_terms coef * sum_b sign_b * in_b(a) * f^T(s; param_b(W))

Rules with two outputs-sign-dependent parts (generalised Gamma) or two contribution groups
(AlphaBeta) have two terms. The op handlers turn a rule's terms into ONNX nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple, Union

import numpy as np

# Input modifiers (what the branch feeds into the layer instead of the activation a).
IDENTITY = "identity"   # a
POSITIVE = "positive"   # max(0, a)
NEGATIVE = "negative"   # min(0, a)
LOW = "low"             # the lower bound l of the input box (z^B rule)
HIGH = "high"           # the upper bound h of the input box (z^B rule)
ONES = "ones"           # a tensor of ones (Flat, W^2 rules)

Bound = Union[float, Tuple[float, ...]]


@dataclass(frozen=True)
class ParamMod:
    """A modifier of the layer's parameters: rho(w) in the paper's notation.

    kind: "identity", "positive" (w+), "negative" (w-), "gamma_positive" (w + gamma*w+),
    "gamma_negative" (w + gamma*w-), "square" (w^2), "ones" (1).
    zero_bias drops the bias from this branch (zennit's ``zero_params=['bias']``).
    Layers without parameters (pooling) ignore the modifier, as zennit and the tutorial do.
    """

    kind: str = "identity"
    gamma: float = 0.0
    zero_bias: bool = False

    def apply(self, w: np.ndarray) -> np.ndarray:
        """rho(w), computed in numpy at compile time (so it becomes an initializer)."""
        if self.kind == "identity":
            return w
        if self.kind == "positive":
            return np.maximum(w, 0)
        if self.kind == "negative":
            return np.minimum(w, 0)
        if self.kind == "gamma_positive":
            return w + self.gamma * np.maximum(w, 0)
        if self.kind == "gamma_negative":
            return w + self.gamma * np.minimum(w, 0)
        if self.kind == "square":
            return w * w
        if self.kind == "ones":
            return np.ones_like(w)
        raise ValueError(f"unknown parameter modifier {self.kind!r}")

    def apply_bias(self, b: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The modified bias, or None when this branch has no bias."""
        if b is None or self.zero_bias:
            return None
        return self.apply(b)


@dataclass(frozen=True)
class Branch:
    """One modified copy of the layer: f(in(a); rho(W), rho(b)), entering z with ``sign``."""

    input: str = IDENTITY
    params: ParamMod = ParamMod()
    sign: float = 1.0


@dataclass(frozen=True)
class Stabilizer:
    """incr(z) = z + (epsilon + relative * rms(z)) * sgn(z).

    sgn(z) is sign(z) with sign(0) = +1 when ``signed`` (zennit), else 1 (the tutorial's
    ``z + 1e-9``). rms(z) is sqrt(mean(z^2)) over one sample's elements: the tutorial's
    "0.25 * std" (its code computes ``(z**2).mean()**.5``). The tutorial takes it over the
    whole batch; we take it per sample so that an explanation does not depend on the samples
    it is batched with.
    """

    epsilon: float = 1e-6
    relative: float = 0.0
    signed: bool = True


@dataclass(frozen=True)
class Term:
    """A group of branches normalised by one z: coef * sum_b sign_b in_b * f^T(mask*R/z)."""

    branches: Tuple[Branch, ...]
    stabilizer: Stabilizer
    coefficient: float = 1.0
    output_mask: Optional[str] = None   # None, "positive" or "negative": sign of the layer's own z


class Rule:
    """Base class: a rule is a frozen dataclass that can list its terms."""

    def terms(self) -> Tuple[Term, ...]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """JSON-friendly form: {"rule": class name, field: value, ...}."""
        out = {"rule": type(self).__name__}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _ident_terms(stabilizer: Stabilizer, zero_bias: bool) -> Tuple[Term, ...]:
    return (Term((Branch(params=ParamMod(zero_bias=zero_bias)),), stabilizer),)


@dataclass(frozen=True)
class LRP0(Rule):
    """LRP-0 (eq. 1 of the overview): R_j = sum_k a_j w_jk / z_k R_k.

    ``epsilon`` only guards against 0/0 (the tutorial's +1e-9)."""

    epsilon: float = 1e-9
    signed: bool = True
    zero_bias: bool = False

    def terms(self):
        return _ident_terms(Stabilizer(self.epsilon, 0.0, self.signed), self.zero_bias)


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon (eq. 3): z_k -> z_k + eps * sign(z_k).

    With ``relative`` > 0 the stabilizer is ``epsilon + relative * rms(z)`` per sample (the
    tutorial's ``0.25 * std``). ``signed=False`` adds it without the sign, as the tutorial's
    code does."""

    epsilon: float = 1e-6
    relative: float = 0.0
    signed: bool = True
    zero_bias: bool = False

    def terms(self):
        return _ident_terms(Stabilizer(self.epsilon, self.relative, self.signed), self.zero_bias)


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-gamma (eq. 4): rho(w) = w + gamma * w+, on weights and biases.

    This is the generalised form of zennit 0.5 (Andeol et al. 2021): outputs with z > 0 use
    (a+, w + gamma w+) and (a-, w + gamma w-), outputs with z < 0 the opposite pairing. On
    non-negative inputs (after a ReLU) and positive outputs it is exactly the tutorial's rule.
    """

    gamma: float = 0.25
    epsilon: float = 1e-6
    signed: bool = True
    zero_bias: bool = False

    def terms(self):
        stab = Stabilizer(self.epsilon, 0.0, self.signed)
        gp = ParamMod("gamma_positive", self.gamma, self.zero_bias)
        gn = ParamMod("gamma_negative", self.gamma, self.zero_bias)
        gp_nb = ParamMod("gamma_positive", self.gamma, True)
        gn_nb = ParamMod("gamma_negative", self.gamma, True)
        return (
            Term((Branch(POSITIVE, gp), Branch(NEGATIVE, gn_nb)), stab, output_mask="positive"),
            Term((Branch(POSITIVE, gn), Branch(NEGATIVE, gp_nb)), stab, output_mask="negative"),
        )


def _contributions(positive: bool, zero_bias: bool) -> Tuple[Branch, ...]:
    """The positive (a+w+ + a-w-) or negative (a+w- + a-w+) contributions; the bias follows
    the sign of the group and never enters through the a- branch (zennit's convention)."""
    same, other = ("positive", "negative") if positive else ("negative", "positive")
    return (
        Branch(POSITIVE, ParamMod(same, zero_bias=zero_bias)),
        Branch(NEGATIVE, ParamMod(other, zero_bias=True)),
    )


@dataclass(frozen=True)
class ZPlus(Rule):
    """z+ rule (Montavon et al. 2017): only positive contributions; equals AlphaBeta(1, 0)."""

    epsilon: float = 1e-6
    signed: bool = True
    zero_bias: bool = False

    def terms(self):
        return (Term(_contributions(True, self.zero_bias), Stabilizer(self.epsilon, 0.0, self.signed)),)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """alpha-beta rule (Bach et al. 2015): alpha * positive part - beta * negative part,
    each normalised separately. Requires alpha - beta = 1 (conservation)."""

    alpha: float = 2.0
    beta: float = 1.0
    epsilon: float = 1e-6
    signed: bool = True
    zero_bias: bool = False

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha, beta >= 0 and alpha - beta = 1, got {self.alpha}, {self.beta}")

    def terms(self):
        stab = Stabilizer(self.epsilon, 0.0, self.signed)
        return (
            Term(_contributions(True, self.zero_bias), stab, coefficient=self.alpha),
            Term(_contributions(False, self.zero_bias), stab, coefficient=-self.beta),
        )


@dataclass(frozen=True)
class ZBox(Rule):
    """z^B rule for a bounded input box [low, high] (overview, Table 1; tutorial section 3):

        z = f(a; W) - f(l; W+) - f(h; W-),   R_in = a*f^T(s;W) - l*f^T(s;W+) - h*f^T(s;W-)

    ``low``/``high``: a scalar, one value per channel, or one per element of a sample, given
    in the layout of ``tensor`` (default: the model input) and carried through the shape ops
    between it and the layer (ops.bounds): for an NHWC model, per-channel bounds are along its
    last axis and per-element ones shaped (H, W, C).
    The tutorial's MLP leaves the bias out, its VGG-16 keeps it in every branch (b, b+, b-);
    both give the same z, since b - b+ - b- = 0, so ``zero_bias`` changes nothing here.
    """

    low: Bound = -1.0
    high: Bound = 1.0
    epsilon: float = 1e-6
    signed: bool = True
    zero_bias: bool = False
    tensor: Optional[str] = None

    def __post_init__(self):
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, (list, np.ndarray)):
                object.__setattr__(self, name, tuple(float(v) for v in np.asarray(value).ravel()))
        lo, hi = np.asarray(self.low, float), np.asarray(self.high, float)
        if lo.shape == hi.shape and np.any(lo > hi):
            raise ValueError("ZBox needs low <= high")

    def terms(self):
        return (
            Term(
                (
                    Branch(IDENTITY, ParamMod("identity", zero_bias=self.zero_bias)),
                    Branch(LOW, ParamMod("positive", zero_bias=self.zero_bias), -1.0),
                    Branch(HIGH, ParamMod("negative", zero_bias=self.zero_bias), -1.0),
                ),
                Stabilizer(self.epsilon, 0.0, self.signed),
            ),
        )


@dataclass(frozen=True)
class Flat(Rule):
    """Flat rule (Lapuschkin et al. 2019): all weights and inputs 1, no bias; relevance is
    spread uniformly over each output's receptive field."""

    epsilon: float = 1e-6
    signed: bool = True

    def terms(self):
        return (Term((Branch(ONES, ParamMod("ones", zero_bias=True)),), Stabilizer(self.epsilon, 0.0, self.signed)),)


@dataclass(frozen=True)
class WSquare(Rule):
    """w^2 rule (Montavon et al. 2017): R_j = sum_k w_jk^2 / sum_j w_jk^2 R_k. As in zennit,
    the bias is squared too unless ``zero_bias``."""

    epsilon: float = 1e-6
    signed: bool = True
    zero_bias: bool = False

    def terms(self):
        return (
            Term((Branch(ONES, ParamMod("square", zero_bias=self.zero_bias)),), Stabilizer(self.epsilon, 0.0, self.signed)),
        )


@dataclass(frozen=True)
class Pass(Rule):
    """Pass the relevance through unchanged (only for layers whose input and output shapes
    are equal, e.g. a 1x1 pooling)."""

    def terms(self):
        return ()


@dataclass(frozen=True)
class Gradient(Rule):
    """Not an LRP rule: the layer's vector-Jacobian product, ``G_in = f^T(G; W)`` (no division
    by z, no multiplication by a). Used by the "gradient" and "gradient_x_input" methods
    (composites.gradient), where every layer takes it and activations, sums and scales take
    their own VJP (ops/gradient.py) instead of passing relevance through."""

    def terms(self):
        raise TypeError("Gradient is not an LRP rule; it has no terms (propagate_linear short-cuts it)")


class _NoBranches(Rule):
    """A rule of the transformer families ("bilinear", "softmax"): its handler implements it
    directly; it has no linear-layer branches."""

    def terms(self):
        raise TypeError(f"{type(self).__name__} is a rule of the bilinear/softmax families, not of a linear layer")


@dataclass(frozen=True)
class Uniform(_NoBranches):
    """AttnLRP's uniform rule for a product of two activations (Achtibat et al. 2024, Prop. 3.2
    and 3.3; LXT's ``matmul`` and ``mul2``): half of the epsilon-LRP relevance to each factor.
    MatMul/Einsum z = a b:  R_a = a * ((R / stab(2z)) b^T),  R_b = b * (a^T (R / stab(2z))),
    stab(u) = u + epsilon sgn(u) (``signed=False``: u + epsilon, as LXT's code). An element-wise
    product a * b: R_a = R_b = R / 2 (exactly, no stabilizer, as LXT's ``mul2``)."""

    epsilon: float = 1e-8
    signed: bool = True


@dataclass(frozen=True)
class AttnSoftmax(_NoBranches):
    """AttnLRP's softmax rule (Achtibat et al. 2024, Prop. 3.1; LXT's ``softmax``): the Taylor
    decomposition at x with the bias absorbed, R_x = x * (R - s * sum_j R_j) along the softmax
    axis (s the softmax output); logits of -inf (masked) count as 0, so they get none."""


@dataclass(frozen=True)
class CPConstant(_NoBranches):
    """CP-LRP (Ali et al. 2022; LXT's ``stop_gradient`` patches): attention probabilities and
    gates are constants. On a Softmax: no relevance flows to its input (Q K^T gets none). On a
    product whose one factor is a Softmax output (A V) or an activated gate (act(gate) * up):
    that factor is a constant weight and the other takes all, by the epsilon rule,
    R_v = v * (A^T (R / stab(z))) (element-wise: R_up = R). A product with no such factor
    takes the uniform rule (``Uniform(epsilon, signed)``)."""

    epsilon: float = 1e-8
    signed: bool = True


RULES = {cls.__name__: cls for cls in (LRP0, Epsilon, Gamma, ZPlus, AlphaBeta, ZBox, Flat, WSquare, Pass, Gradient,
                                       Uniform, AttnSoftmax, CPConstant)}


def rule_from_dict(spec: dict) -> Rule:
    """Build a rule from its JSON form {"rule": "Gamma", "gamma": 0.25, ...}."""
    spec = dict(spec)
    name = spec.pop("rule", None)
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(RULES)}")
    cls = RULES[name]
    known = {f.name for f in fields(cls)}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"rule {name} has no parameter(s) {sorted(unknown)}; it takes {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
