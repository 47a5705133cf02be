"""Composites: which rule each layer gets. An ordered list of (predicate, rule); first match wins.

Layers are the linear-type nodes on the relevance path (Conv, Gemm, MatMul, AveragePool,
GlobalAveragePool, ReduceMean/ReduceSum, MaxPool) in the model's order; ``Index`` counts them
from 0. Uncounted families take a rule too, with a default when no predicate (Family, Name)
picks one: "norm" (an unfoldable BatchNormalization, LayerNormalization, RMSNormalization)
Epsilon(1e-6), "bilinear" (MatMul/Einsum/Mul of two activations) Uniform(), "softmax" (a
Softmax inside the graph) AttnSoftmax(), "sum" (Add/Sub/Sum: the stabilizer of the proportional
split, LRP0 or Epsilon) Epsilon(1e-6). Activations, gates and shape ops take no rule. A
composite also says how MaxPool is read: "winner" (relevance to the arg-max, as zennit's
gradient) or "avg" (as average pooling, as the tutorial).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from .errors import CompositeError
from .ops.arithmetic import SUM_EPSILON
from .rules import (LRP0, AlphaBeta, AttnSoftmax, CPConstant, Epsilon, Flat, Gamma, Gradient, Rule, Uniform, ZBox, ZPlus,
                    rule_from_dict)

#: ImageNet pixel range [0, 1] after torchvision's normalisation, per channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_LOW = tuple(float((0 - m) / s) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
IMAGENET_HIGH = tuple(float((1 - m) / s) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))

#: What a composite computes: LRP relevance, or the gradient baselines (see Composite).
METHODS = ("lrp", "gradient", "gradient_x_input")

FAMILY_GROUPS = {
    "linear": ("conv", "dense"),
    "pool": ("avgpool", "maxpool"),
    "all": ("conv", "dense", "avgpool", "maxpool"),
}
#: Families outside "all" and outside the layer index, with the rule they get when no predicate
#: matches: an unfoldable BatchNormalization (and a LayerNorm/RMSNorm, statistics held constant)
#: is read with zennit's Norm-like epsilon rule; products of two activations and Softmax take
#: AttnLRP's rules (Achtibat et al. 2024), which are what an LRP of them means by default; sums
#: split in proportion with zennit's Norm stabilizer (ops/arithmetic.py).
UNCOUNTED_FAMILIES = {"norm": Epsilon(1e-6), "bilinear": Uniform(), "softmax": AttnSoftmax(),
                      "sum": Epsilon(SUM_EPSILON)}


@dataclass(frozen=True)
class Layer:
    """What a predicate sees of a node: its name, op type, family and layer index (None for
    the uncounted families)."""

    name: str
    op_type: str
    family: str
    index: Optional[int]


class Predicate:
    def matches(self, layer: Layer, layers: Sequence[Layer]) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Family(Predicate):
    """Layers of the given families: conv, dense, avgpool, maxpool, or the groups linear
    (conv+dense), pool (avgpool+maxpool), all; and the uncounted norm, bilinear, softmax, sum."""

    families: Tuple[str, ...]

    def __init__(self, *families: str):
        expanded = []
        for f in families:
            if f in FAMILY_GROUPS:
                expanded += FAMILY_GROUPS[f]
            elif f in FAMILY_GROUPS["all"] or f in UNCOUNTED_FAMILIES:
                expanded.append(f)
            else:
                raise CompositeError(f"unknown family {f!r}; known: "
                                     f"{', '.join(FAMILY_GROUPS['all'] + tuple(UNCOUNTED_FAMILIES) + tuple(FAMILY_GROUPS))}")
        object.__setattr__(self, "families", tuple(expanded))

    def matches(self, layer, layers):
        return layer.family in self.families


@dataclass(frozen=True)
class Name(Predicate):
    """Layers whose node name matches a regular expression (re.search)."""

    pattern: str

    def matches(self, layer, layers):
        return re.search(self.pattern, layer.name) is not None


@dataclass(frozen=True)
class Index(Predicate):
    """Layers with start <= index < stop (stop None: to the last); negative values count from
    the end, as Python slices do."""

    start: int = 0
    stop: Optional[int] = None

    def matches(self, layer, layers):
        return layer.index in range(len(layers))[self.start:self.stop]


@dataclass(frozen=True)
class First(Predicate):
    """The first layer (in model order) that matches ``inner``."""

    inner: Predicate

    def matches(self, layer, layers):
        first = next((l for l in layers if self.inner.matches(l, layers)), None)
        return first is not None and first.name == layer.name


@dataclass(frozen=True)
class AllOf(Predicate):
    """Layers that every one of ``predicates`` matches (e.g. the dense layers of one module)."""

    predicates: Tuple[Predicate, ...]

    def __init__(self, *predicates: Predicate):
        object.__setattr__(self, "predicates", tuple(predicates))

    def matches(self, layer, layers):
        return all(p.matches(layer, layers) for p in self.predicates)


@dataclass(frozen=True)
class Composite:
    """An ordered list of (predicate, rule); the first predicate that matches a layer gives
    its rule. ``maxpool``: "winner" or "avg". ``method``: "lrp" (relevance), or "gradient" /
    "gradient_x_input" (the gradient of the explained score, times the input for the latter:
    every layer takes the Gradient rule, activations and sums their derivative; ops/gradient.py)."""

    rules: Tuple[Tuple[Predicate, Rule], ...]
    maxpool: str = "winner"
    name: str = "custom"
    method: str = "lrp"

    def __post_init__(self):
        if self.maxpool not in ("winner", "avg"):
            raise CompositeError(f"maxpool must be 'winner' or 'avg', got {self.maxpool!r}")
        if self.method not in METHODS:
            raise CompositeError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method != "lrp" and self.maxpool != "winner":
            raise CompositeError("the gradient of MaxPool is winner-take-all: a gradient method needs maxpool='winner'")
        object.__setattr__(self, "rules", tuple(tuple(pair) for pair in self.rules))

    def assign(self, layers: Sequence[Layer], maxpool: Optional[str] = None) -> Dict[str, Rule]:
        """The rule of every layer that takes one (MaxPool only in "avg" mode); a counted layer
        that no predicate matches is an error, an uncounted one gets its family's default."""
        mode = maxpool or self.maxpool
        counted = [layer for layer in layers if layer.index is not None]
        chosen = {}
        for layer in layers:
            if layer.family == "maxpool" and mode == "winner":
                continue
            rule = next((r for p, r in self.rules if p.matches(layer, counted)), None)
            if rule is None and layer.index is None:
                rule = UNCOUNTED_FAMILIES[layer.family]
            if rule is None:
                raise CompositeError(
                    f"composite {self.name!r} has no rule for layer {layer.name!r} ({layer.op_type}, "
                    f"index {layer.index}); add one, e.g. (Family('all'), Epsilon())"
                )
            if isinstance(rule, Gradient) != (self.method != "lrp"):
                raise CompositeError(
                    f"composite {self.name!r} (method {self.method!r}) gives {layer.name!r} the rule {rule}: "
                    f"the Gradient rule goes with the methods 'gradient'/'gradient_x_input' (presets of those "
                    f"names), every LRP rule with method 'lrp'"
                )
            chosen[layer.name] = rule
        return chosen


def _zennit_base(first: Optional[Tuple[Predicate, Rule]], conv: Rule, epsilon: float, stabilizer: float, name: str):
    """zennit's layer_map_base plus (conv, dense) rules: sums and avg pooling -> Norm (epsilon
    with the stabilizer), dense -> Epsilon, MaxPool -> its gradient (winner); a MaxPool read as
    average pooling (maxpool="avg") is treated like average pooling."""
    pairs = ([first] if first else []) + [
        (Family("conv"), conv),
        (Family("dense"), Epsilon(epsilon)),
        (Family("pool"), Epsilon(stabilizer)),
        (Family("sum"), Epsilon(stabilizer)),
    ]
    return Composite(tuple(pairs), "winner", name)


def epsilon_gamma_box(low=IMAGENET_LOW, high=IMAGENET_HIGH, epsilon=1e-6, gamma=0.25, stabilizer=1e-6) -> Composite:
    """zennit's EpsilonGammaBox: ZBox on the first conv, Gamma on the other convs, Epsilon on
    dense layers. Default bounds: ImageNet's [0, 1] pixel range after normalisation."""
    first = (First(Family("conv")), ZBox(low, high, stabilizer))
    return _zennit_base(first, Gamma(gamma, stabilizer), epsilon, stabilizer, "epsilon_gamma_box")


def epsilon_plus(epsilon=1e-6, stabilizer=1e-6) -> Composite:
    """zennit's EpsilonPlus: ZPlus on convs, Epsilon on dense layers."""
    return _zennit_base(None, ZPlus(stabilizer), epsilon, stabilizer, "epsilon_plus")


def epsilon_plus_flat(epsilon=1e-6, stabilizer=1e-6) -> Composite:
    """zennit's EpsilonPlusFlat: Flat on the first linear layer, then as EpsilonPlus."""
    first = (First(Family("linear")), Flat(stabilizer))
    return _zennit_base(first, ZPlus(stabilizer), epsilon, stabilizer, "epsilon_plus_flat")


def epsilon_alpha2_beta1(epsilon=1e-6, stabilizer=1e-6) -> Composite:
    """zennit's EpsilonAlpha2Beta1: AlphaBeta(2, 1) on convs, Epsilon on dense layers."""
    return _zennit_base(None, AlphaBeta(2.0, 1.0, stabilizer), epsilon, stabilizer, "epsilon_alpha2_beta1")


def tutorial_mlp(low=-1.0, high=1.0) -> Composite:
    """The tutorial's MNIST MLP schedule: z^B without bias at the input, gamma=0.1 on layer 1,
    epsilon = 0.1 * rms(z) on layer 2, LRP-0 above; every denominator + 1e-9 as its code does."""
    return Composite(
        (
            (Index(0, 1), ZBox(low, high, 1e-9, signed=False, zero_bias=True)),
            (Index(1, 2), Gamma(0.1, 1e-9, signed=False)),
            (Index(2, 3), Epsilon(1e-9, relative=0.1, signed=False)),
            (Family("all"), LRP0(1e-9, signed=False)),
        ),
        "avg",
        "tutorial_mlp",
    )


def tutorial_vgg16(low=IMAGENET_LOW, high=IMAGENET_HIGH) -> Composite:
    """The tutorial's VGG-16 schedule. Its layers 0-16 (blocks 1-3, pools included) are our
    layer indices 0-9, layers 17-30 (blocks 4-5) indices 10-17, the classifier 18 on (the
    exported 1x1 adaptive pooling, which the tutorial skips, is index 18 and gets LRP-0):
    z^B with bias at the input, gamma=0.25, epsilon = 0.25 * rms(z), LRP-0; MaxPool as AvgPool."""
    return Composite(
        (
            (Index(0, 1), ZBox(low, high, 1e-9, signed=False)),
            (Index(1, 10), Gamma(0.25, 1e-9, signed=False)),
            (Index(10, 18), Epsilon(1e-9, relative=0.25, signed=False)),
            (Family("all"), LRP0(1e-9, signed=False)),
        ),
        "avg",
        "tutorial_vgg16",
    )


def _transformer(linear: Tuple[Tuple[Predicate, Rule], ...], cp: bool, epsilon: float, uniform_epsilon: float,
                 sum_epsilon: float, name: str) -> Composite:
    """The linear layers' rules, then pooling and norms Epsilon(epsilon), sums the proportional
    split with Epsilon(sum_epsilon), and inside attention AttnLRP's rules (uniform, softmax) or
    CP-LRP's (attention probabilities and gates constant)."""
    inner = CPConstant(uniform_epsilon) if cp else None
    return Composite(linear + (
        (Family("pool"), Epsilon(epsilon)),
        (Family("norm"), Epsilon(epsilon)),
        (Family("sum"), Epsilon(sum_epsilon)),
        (Family("bilinear"), inner or Uniform(uniform_epsilon)),
        (Family("softmax"), inner or AttnSoftmax()),
    ), "winner", name)


def attnlrp(epsilon=1e-6, uniform_epsilon=1e-8, sum_epsilon=SUM_EPSILON) -> Composite:
    """AttnLRP (Achtibat et al. 2024) with LXT's rules: linear layers (Conv, Gemm, MatMul with
    a constant weight) and pooling Epsilon(1e-6), products of two activations the uniform rule
    (LXT's ``matmul`` epsilon 1e-8), Softmax AttnLRP's rule, LayerNorm with sigma held constant
    under Epsilon(1e-6) (LXT's ``layer_norm``), RMSNorm the same (the identity up to the
    stabilizer: LXT's ``rms_norm_identity``), activations identity, sums Norm-like. LXT's
    efficient mode has no stabilizer in linear layers, products and sums: ``epsilon``,
    ``uniform_epsilon`` and ``sum_epsilon`` near 0 (1e-12) give its relevance."""
    return _transformer(((Family("linear"), Epsilon(epsilon)),), False, epsilon, uniform_epsilon, sum_epsilon,
                        "attnlrp")


def cp_lrp(epsilon=1e-6, uniform_epsilon=1e-8, sum_epsilon=SUM_EPSILON) -> Composite:
    """CP-LRP (Ali et al. 2022; LXT's ``cp_LRP``): as attnlrp, but the attention probabilities
    and SwiGLU's activated gates are constants: no relevance to Q K^T, all of A V's to V, all of
    act(gate) * up's to up."""
    return _transformer(((Family("linear"), Epsilon(epsilon)),), True, epsilon, uniform_epsilon, sum_epsilon,
                        "cp_lrp")


#: The projections of torchvision's nn.MultiheadAttention (its packed in_proj and out_proj) run
#: as F.linear calls, not as nn.Linear modules, so zennit's module hooks never reach them; in
#: the TorchScript export they are the dense layers of the scope ``self_attention``.
MHA_PROJECTIONS = AllOf(Family("dense"), Name(r"/self_attention/"))


def _lxt_vit(conv: Rule, dense: Rule, epsilon: float, uniform_epsilon: float, sum_epsilon: float, name: str):
    """LXT's ViT recipe (its examples/vit_torch.py with lxt.efficient.models.vit_torch.cp_LRP):
    zennit's rule ``conv`` on Conv2d and ``dense`` on nn.Linear modules; the attention
    projections, which zennit does not reach (MHA_PROJECTIONS), LXT's gradient: Epsilon(epsilon);
    CP-LRP inside attention, LayerNorm with sigma constant, GELU identity."""
    linear = ((MHA_PROJECTIONS, Epsilon(epsilon)), (Family("conv"), conv), (Family("dense"), dense))
    return _transformer(linear, True, epsilon, uniform_epsilon, sum_epsilon, name)


def vit_gamma(conv_gamma=0.25, linear_gamma=0.05, stabilizer=1e-6, epsilon=1e-6, uniform_epsilon=1e-8,
              sum_epsilon=SUM_EPSILON) -> Composite:
    """LXT's ViT recipe with zennit's Gamma composite: Gamma(conv_gamma) on Conv, Gamma(linear_gamma)
    on the Linear layers but the attention projections (``_lxt_vit``); ``stabilizer``: zennit's."""
    return _lxt_vit(Gamma(conv_gamma, stabilizer), Gamma(linear_gamma, stabilizer), epsilon, uniform_epsilon,
                    sum_epsilon, "vit_gamma")


def vit_epsilon(stabilizer=1e-6, epsilon=1e-6, uniform_epsilon=1e-8, sum_epsilon=SUM_EPSILON) -> Composite:
    """LXT's ViT recipe with zennit's Epsilon(stabilizer) on Conv and the Linear layers but the
    attention projections (``_lxt_vit``)."""
    return _lxt_vit(Epsilon(stabilizer), Epsilon(stabilizer), epsilon, uniform_epsilon, sum_epsilon, "vit_epsilon")


#: What the gradient methods cover: every family that takes a rule.
_GRADIENT_FAMILIES = Family("all", "norm", "bilinear", "softmax", "sum")


def gradient() -> Composite:
    """Not LRP: the gradient of the explained score with respect to the input, computed in the
    same compiled graph (a baseline for lrp_onnx.evaluate)."""
    return Composite(((_GRADIENT_FAMILIES, Gradient()),), "winner", "gradient", method="gradient")


def gradient_x_input() -> Composite:
    """Not LRP: gradient x input (Shrikumar et al. 2016), the input times the gradient above."""
    return Composite(((_GRADIENT_FAMILIES, Gradient()),), "winner", "gradient_x_input", method="gradient_x_input")


PRESETS: Dict[str, Callable[..., Composite]] = {
    f.__name__: f
    for f in (epsilon_gamma_box, epsilon_plus, epsilon_plus_flat, epsilon_alpha2_beta1, tutorial_mlp, tutorial_vgg16,
              attnlrp, cp_lrp, vit_gamma, vit_epsilon, gradient, gradient_x_input)
}


def predicate_from_json(spec) -> Predicate:
    """"all" | {"family": str|[str]} | {"name": regex} | {"index": [start, stop]} | {"first": spec}
    | {"all_of": [spec, ...]}."""
    if spec == "all":
        return Family("all")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise CompositeError(f"a 'where' must be \"all\" or an object with one key, got {spec!r}")
    (key, value), = spec.items()
    if key == "family":
        return Family(*([value] if isinstance(value, str) else value))
    if key == "name":
        return Name(str(value))
    if key == "index":
        bounds = [value] if isinstance(value, int) else list(value)
        return Index(*bounds) if len(bounds) == 2 else Index(bounds[0], bounds[0] + 1)
    if key == "first":
        return First(predicate_from_json(value))
    if key == "all_of":
        if not isinstance(value, list) or not value:
            raise CompositeError(f"'all_of' takes a non-empty list of predicates, got {value!r}")
        return AllOf(*map(predicate_from_json, value))
    raise CompositeError(f"unknown predicate {key!r}; use family, name, index, first, all_of or \"all\"")


def composite_from_json(spec: dict) -> Composite:
    """{"preset": name, ...options} or {"maxpool": "avg"|"winner", "rules": [{"where": ..., "rule": {...}}]}."""
    if not isinstance(spec, dict):
        raise CompositeError("a composite JSON must be an object")
    if "preset" in spec:
        options = {k: v for k, v in spec.items() if k != "preset"}
        return preset(spec["preset"], **options)
    if "rules" not in spec:
        raise CompositeError("a composite JSON needs \"preset\" or \"rules\"")
    try:
        pairs = tuple((predicate_from_json(r["where"]), rule_from_dict(r["rule"])) for r in spec["rules"])
    except (KeyError, TypeError) as exc:
        raise CompositeError(f"each rule entry needs \"where\" and \"rule\": {exc}") from None
    except ValueError as exc:
        raise CompositeError(str(exc)) from None
    return Composite(pairs, spec.get("maxpool", "winner"), spec.get("name", "custom"), spec.get("method", "lrp"))


def preset(name: str, **options) -> Composite:
    if name not in PRESETS:
        raise CompositeError(f"unknown composite {name!r}; presets: {', '.join(PRESETS)}")
    try:
        return PRESETS[name](**options)
    except TypeError as exc:
        raise CompositeError(f"bad options for preset {name!r}: {exc}") from None


CompositeLike = Union[str, "os.PathLike[str]", dict, Composite]


def resolve_composite(spec: CompositeLike) -> Composite:
    """A composite from a preset name, a JSON file path, a JSON-like dict, or a Composite."""
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, dict):
        return composite_from_json(spec)
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in PRESETS:
            return preset(text)
        if text.endswith(".json") or os.path.sep in text:
            if not os.path.isfile(text):
                raise CompositeError(f"composite file not found: {text}")
            try:
                with open(text) as fh:
                    return composite_from_json(json.load(fh))
            except json.JSONDecodeError as exc:
                raise CompositeError(f"{text} is not valid JSON: {exc}") from None
        raise CompositeError(f"unknown composite {text!r}; presets: {', '.join(PRESETS)}, or a .json file")
    raise CompositeError(f"a composite is a preset name, a .json path, a dict or a Composite, not {type(spec).__name__}")
