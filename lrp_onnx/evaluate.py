"""Explanation quality by pixel flipping / region perturbation (Samek et al. 2017, "Evaluating
the visualization of what a deep neural network has learned").

The input is cut into square patches; each patch's relevance is the sum of the relevance of its
pixels over all channels. Patches are then replaced step by step, most relevant first (MoRF) or
least relevant first (LeRF), and the ORIGINAL model (one onnxruntime session, many perturbed
copies per ``session.run``) scores every perturbed copy.

- curve: the model's output for the explained class after 0, 1, ..., ``steps`` steps. By
  default the raw output (the logit, for a model that outputs logits; a probability for one
  that ends in Softmax); ``normalize=True`` divides each sample's curve by its unperturbed score.
- AUC: the area under the mean curve over [0, 1] (step k at k/steps, trapezoid rule), i.e. the
  curve's average height, in the units of the score.
- ABPC = AUC(LeRF) - AUC(MoRF) (area between the perturbation curves, Schulz et al. 2020):
  large when removing the most relevant patches destroys the score quickly while removing the
  least relevant ones leaves it, so larger is better; ~0 for a random heatmap.

Replacement values: "constant" (``value``), "uniform" noise in [low, high] (default: the data's
range; seeded, the same noise for both orders), "blur" (the patch of a Gaussian-blurred copy of
the image, ``sigma`` pixels). Ties in the patch order are broken by a seeded random permutation.

Text (``token_deletion``): the units are tokens (or merged words) instead of patches, removed in
the same MoRF/LeRF orders (``removal_ranks``) and summarized by the same ``Curves`` (AUC, ABPC):
each removed token becomes [MASK], [UNK] or another id, or is deleted; special tokens ([CLS],
[SEP], padding) stay.

Only numpy and onnxruntime are needed (the plot needs matplotlib: ``pip install
'lrp_onnx[evaluate]'``).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort

from .errors import InputError
from .images import channels_last
from .load import ModelLike, load_model

REPLACEMENTS = ("constant", "uniform", "blur")
LAYOUTS = ("NCHW", "NHWC", "NHW", "flat")
ORDERS = ("morf", "lerf")


@dataclass(frozen=True)
class Perturbation:
    """How the input is perturbed.

    patch: side of the square patches in pixels (edge patches may be smaller). steps: number
    of perturbation steps (the curve has steps + 1 points). per_step: patches replaced per step
    (None: ceil(patches / steps), so that the last step has replaced the whole image).
    replacement: "constant" | "uniform" | "blur"; value: the constant; low/high: the uniform
    range (None: the data's min/max); sigma: the blur's standard deviation in pixels.
    seed: the uniform noise, the tie-breaking and the "random" baseline.
    """

    patch: int = 4
    steps: int = 16
    per_step: Optional[int] = None
    replacement: str = "constant"
    value: float = 0.0
    low: Optional[float] = None
    high: Optional[float] = None
    sigma: float = 2.0
    seed: int = 0

    def __post_init__(self):
        for name in ("patch", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive int, got {value!r}")
        if self.per_step is not None and (not isinstance(self.per_step, (int, np.integer)) or self.per_step < 1):
            raise InputError(f"per_step must be a positive int or None, got {self.per_step!r}")
        if self.replacement not in REPLACEMENTS:
            raise InputError(f"unknown replacement {self.replacement!r}; use one of {', '.join(REPLACEMENTS)}")
        if not math.isfinite(self.value) or not self.sigma > 0:
            raise InputError(f"value must be finite and sigma > 0, got {self.value!r}, {self.sigma!r}")
        if self.low is not None and self.high is not None and not self.low <= self.high:
            raise InputError(f"uniform noise needs low <= high, got {self.low}, {self.high}")


@dataclass
class Curves:
    """Perturbation curves of one method: ``morf``/``lerf`` (N, steps + 1) scores per sample,
    ``fraction`` (steps + 1,) the share of pixels replaced after each step."""

    morf: np.ndarray
    lerf: np.ndarray
    fraction: np.ndarray

    @staticmethod
    def _auc(curve: np.ndarray) -> float:
        mean = curve.mean(axis=0)
        return float(((mean[1:] + mean[:-1]) / 2).sum() / (len(mean) - 1))

    @property
    def auc_morf(self) -> float:
        return self._auc(self.morf)

    @property
    def auc_lerf(self) -> float:
        return self._auc(self.lerf)

    @property
    def abpc(self) -> float:
        """AUC(LeRF) - AUC(MoRF)."""
        return self.auc_lerf - self.auc_morf

    def abpc_per_sample(self) -> np.ndarray:
        """Each sample's ABPC (their mean is ``abpc``): for standard errors and paired tests."""
        trap = lambda c: ((c[:, 1:] + c[:, :-1]) / 2).sum(axis=1) / (c.shape[1] - 1)   # noqa: E731
        return trap(self.lerf) - trap(self.morf)


# --- layouts ---------------------------------------------------------------------------------

def infer_layout(sample_shape: Sequence[int]) -> str:
    """NCHW for (C, H, W) unless the last axis looks like channels (1 or 3) and the first does
    not (then NHWC); NHW for (H, W); flat for (F,) when F is a square number."""
    shape = tuple(sample_shape)
    if len(shape) == 3:
        return "NHWC" if channels_last(shape) else "NCHW"
    if len(shape) == 2:
        return "NHW"
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        return "flat"
    raise InputError(f"cannot tell the image layout of samples shaped {shape}; give layout= "
                     f"({', '.join(LAYOUTS)}) and, for flat inputs, image_shape=(H, W)")


def _to_nchw(a: np.ndarray, layout: str, image_shape: Optional[Tuple[int, int]]) -> np.ndarray:
    if layout == "NCHW":
        return a
    if layout == "NHWC":
        return a.transpose(0, 3, 1, 2)
    if layout == "NHW":
        return a[:, None]
    h, w = image_shape
    return a.reshape(len(a), 1, h, w)


def _from_nchw(a: np.ndarray, layout: str, sample_shape) -> np.ndarray:
    if layout == "NCHW":
        return a
    if layout == "NHWC":
        return a.transpose(0, 2, 3, 1)
    return a.reshape((len(a),) + tuple(sample_shape))


def _check_layout(sample_shape, layout, image_shape):
    layout = layout or infer_layout(sample_shape)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    rank = {"NCHW": 3, "NHWC": 3, "NHW": 2, "flat": 1}[layout]
    if len(sample_shape) != rank:
        raise InputError(f"layout {layout} needs samples of rank {rank}, got shape {tuple(sample_shape)}")
    if layout == "flat":
        if image_shape is None:
            side = math.isqrt(sample_shape[0])
            if side * side != sample_shape[0]:
                raise InputError(f"flat samples of {sample_shape[0]} features: give image_shape=(H, W)")
            image_shape = (side, side)
        if int(np.prod(image_shape)) != sample_shape[0]:
            raise InputError(f"image_shape {tuple(image_shape)} does not hold {sample_shape[0]} features")
    return layout, image_shape


# --- patches and orders ----------------------------------------------------------------------

def patch_relevance(relevance: np.ndarray, patch: int) -> np.ndarray:
    """(N, C, H, W) relevance -> (N, ceil(H/p), ceil(W/p)): summed over channels and each patch."""
    n, _, h, w = relevance.shape
    hp, wp = -(-h // patch), -(-w // patch)
    padded = np.zeros((n, hp * patch, wp * patch), np.float64)
    padded[:, :h, :w] = relevance.sum(axis=1, dtype=np.float64)
    return padded.reshape(n, hp, patch, wp, patch).sum(axis=(2, 4))


def orders(scores: np.ndarray, seed: int = 0) -> Dict[str, np.ndarray]:
    """Flat patch indices (N, P) most relevant first ("morf") and least relevant first ("lerf");
    ties are broken by a seeded random permutation (different for the two orders)."""
    flat = scores.reshape(len(scores), -1)
    rng = np.random.default_rng(seed)
    result = {}
    for order, sign in (("morf", -1.0), ("lerf", 1.0)):
        tiebreak = rng.permutation(flat.shape[1])
        result[order] = np.stack([np.lexsort((tiebreak, sign * row)) for row in flat])
    return result


def removal_ranks(scores: np.ndarray, seed: int = 0) -> Dict[str, np.ndarray]:
    """{order: (N, P) rank}: the position of each unit (patch, token) in the removal order of
    ``orders`` (0: removed first); a unit is gone after k removals when its rank < k."""
    ranks = {}
    for order, idx in orders(scores, seed).items():
        rank = np.empty_like(idx)
        np.put_along_axis(rank, idx, np.broadcast_to(np.arange(idx.shape[1]), idx.shape).copy(), axis=1)
        ranks[order] = rank
    return ranks


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes (edge padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = img.astype(np.float64)
    for axis in (-2, -1):
        size = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        out = sum(k * np.take(padded, np.arange(i, i + size), axis=axis) for i, k in enumerate(kernel))
    return out.astype(img.dtype)


def replacement_image(img: np.ndarray, p: Perturbation) -> np.ndarray:
    """What a replaced pixel becomes, for every pixel of the (N, C, H, W) images."""
    if p.replacement == "constant":
        return np.full_like(img, p.value)
    if p.replacement == "blur":
        return _gaussian_blur(img, p.sigma)
    low = float(img.min()) if p.low is None else p.low
    high = float(img.max()) if p.high is None else p.high
    return np.random.default_rng(p.seed).uniform(low, high, img.shape).astype(img.dtype)


# --- running the model -----------------------------------------------------------------------

class _Scorer:
    """One onnxruntime session of the original model; scores batches of perturbed inputs."""

    def __init__(self, model: ModelLike, providers=None):
        proto = load_model(model)
        self.session = ort.InferenceSession(proto.SerializeToString(), providers=providers or ort.get_available_providers())
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0].name

    def check(self, x: np.ndarray) -> None:
        want = self.input.shape
        if x.ndim != len(want) or any(isinstance(d, int) and d > 0 and d != g for d, g in zip(want[1:], x.shape[1:])):
            raise InputError(f"inputs have shape {x.shape}; the model {self.input.name!r} expects {tuple(want)}")

    def __call__(self, batch) -> np.ndarray:
        """The output (N, -1) of a batch: one array (the first input) or {input name: array}."""
        out = self.session.run([self.output], batch if isinstance(batch, dict) else {self.input.name: batch})[0]
        return out.reshape(len(out), -1)


def _targets(target, n: int, classes: int, predicted: np.ndarray) -> np.ndarray:
    if target is None:
        return predicted
    t = np.asarray(target)
    if t.dtype.kind not in "iu" or t.ndim > 1 or (t.ndim == 1 and len(t) != n):
        raise InputError(f"target must be None, an int or one int per sample ({n}), got {t.shape} {t.dtype}")
    t = np.broadcast_to(t, (n,)).astype(np.int64)
    if t.min() < 0 or t.max() >= classes:
        raise InputError(f"targets must lie in [0, {classes}), got {t.min()}..{t.max()}")
    return t


def pixel_flipping(model: ModelLike, x: np.ndarray, relevance: np.ndarray, target=None,
                   perturbation: Perturbation = Perturbation(), layout: Optional[str] = None,
                   image_shape: Optional[Tuple[int, int]] = None, normalize: bool = False,
                   batch_size: int = 2048, providers=None, _scorer: Optional[_Scorer] = None) -> Curves:
    """MoRF and LeRF curves of one heatmap per sample. ``x``, ``relevance``: (N, ...) in the
    model's input layout (``layout``: NCHW, NHWC, NHW or flat with ``image_shape``; None:
    guessed by ``infer_layout``). ``target``: the explained class (None: the prediction on x).
    All perturbed copies go through one onnxruntime session, ``batch_size`` rows per run."""
    x = np.asarray(x)
    relevance = np.asarray(relevance)
    if x.ndim < 2 or len(x) == 0 or x.dtype.kind not in "fiu":
        raise InputError(f"x must be a non-empty numeric batch (N, ...), got shape {x.shape} dtype {x.dtype}")
    if relevance.shape != x.shape:
        raise InputError(f"relevance has shape {relevance.shape}, the inputs {x.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(relevance))):
        raise InputError("inputs and relevance must be finite")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    x = x.astype(np.float32)
    p = perturbation
    layout, image_shape = _check_layout(x.shape[1:], layout, image_shape)
    scorer = _scorer or _Scorer(model, providers)
    scorer.check(x)
    img = np.ascontiguousarray(_to_nchw(x, layout, image_shape))
    h, w = img.shape[2:]
    if p.patch > max(h, w):
        raise InputError(f"patch {p.patch} is larger than the image ({h}x{w})")
    scores = patch_relevance(_to_nchw(relevance, layout, image_shape), p.patch)
    hp, wp = scores.shape[1:]
    n_patches = hp * wp
    per_step = p.per_step or -(-n_patches // p.steps)
    replaced_by = replacement_image(img, p)
    # which patch each pixel belongs to (flat patch index), shared by all samples
    pixel_patch = (np.arange(h)[:, None] // p.patch) * wp + np.arange(w)[None, :] // p.patch
    n = len(x)

    unperturbed = scorer(x)
    target = _targets(target, n, unperturbed.shape[1], unperturbed.argmax(axis=1))
    curves = {order: np.empty((n, p.steps + 1), np.float64) for order in ORDERS}
    for order in ORDERS:
        curves[order][:, 0] = unperturbed[np.arange(n), target]
    fraction = np.zeros(p.steps + 1)

    ranks = removal_ranks(scores, p.seed)

    pending, slots = [], []

    def flush():
        if not pending:
            return
        out = scorer(np.concatenate(pending))
        start = 0
        for order, step, rows in slots:
            part = out[start:start + rows]
            curves[order][:, step] = part[np.arange(n), target]
            start += rows
        pending.clear()
        slots.clear()

    for step in range(1, p.steps + 1):
        gone = min(step * per_step, n_patches)
        for order in ORDERS:
            removed = ranks[order] < gone                                   # (N, P)
            mask = np.take_along_axis(removed, np.broadcast_to(pixel_patch.ravel(), (n, h * w)), axis=1)
            mask = mask.reshape(n, 1, h, w)
            perturbed = np.where(mask, replaced_by, img)
            pending.append(np.ascontiguousarray(_from_nchw(perturbed, layout, x.shape[1:])))
            slots.append((order, step, n))
            if order == "morf":
                fraction[step] = float(mask.mean())
            if sum(s[2] for s in slots) >= batch_size:
                flush()
    flush()
    if normalize:
        base = curves["morf"][:, :1].copy()
        if np.any(np.abs(base) < 1e-12):
            raise InputError("normalize=True: some sample's unperturbed score is 0")
        curves = {k: v / base for k, v in curves.items()}
    return Curves(curves["morf"], curves["lerf"], fraction)


# --- token deletion --------------------------------------------------------------------------

TOKEN_REPLACEMENTS = ("mask", "unk", "delete")


@dataclass(frozen=True)
class TokenPerturbation:
    """How a text is perturbed: ``steps`` steps (the curve has steps + 1 points), each removing
    ``per_step`` tokens (None: ceil(k n / steps) of a text's n tokens are gone after step k, so
    that the last step has removed them all); ``replacement``: "mask" (the tokenizer's [MASK]),
    "unk" ([UNK]), "delete" (the position is cut from every input), or a token id. ``seed``:
    the tie-breaking."""

    steps: int = 10
    per_step: Optional[int] = None
    replacement: Union[str, int] = "mask"
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "per_step"):
            value = getattr(self, name)
            if (value is not None or name == "steps") and (
                    isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise InputError(f"{name} must be a positive int, got {value!r}")
        r = self.replacement
        if not (r in TOKEN_REPLACEMENTS or (isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r >= 0)):
            raise InputError(f"unknown token replacement {r!r}; use one of {', '.join(TOKEN_REPLACEMENTS)} or a token id")


def _perturbed_text(feeds: Mapping[str, np.ndarray], positions: np.ndarray, replacement: Optional[int]):
    """``feeds`` with the token ``positions`` replaced by the id ``replacement`` (in input_ids;
    the other inputs unchanged), or cut from every input (``replacement`` None)."""
    if replacement is None:
        keep = np.ones(len(feeds["input_ids"]), bool)
        keep[positions] = False
        return {k: v[keep] for k, v in feeds.items()}
    ids = feeds["input_ids"].copy()
    ids[positions] = replacement
    return {**feeds, "input_ids": ids}


def token_deletion(model: ModelLike, explanations: Sequence, perturbation: TokenPerturbation = TokenPerturbation(),
                   tokenizer=None, batch_size: int = 256, providers=None) -> Curves:
    """MoRF and LeRF curves of text explanations (``text.TextExplanation``: each with its
    ``feeds``, ``relevance`` per entry, ``special``, ``pieces`` and target ``mask``): the units
    are the entries that are not special tokens ([CLS], [SEP], padding are never removed); a
    merged word goes as a whole (all its pieces). The score of a perturbed text is
    sum(output * mask), the explained score (a class logit; for a similarity, e_A' · e_B with
    e_B fixed); for a sequence output the mask's last position scores the last position.
    ``tokenizer`` gives the ids of "mask" and "unk". The ORIGINAL model scores every copy."""
    from .text import special_token_id

    p = perturbation
    if not explanations:
        raise InputError("no explanations to evaluate")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if p.replacement in ("mask", "unk") and tokenizer is None:
        raise InputError(f"replacement {p.replacement!r} needs the tokenizer (its id of the token)")
    replacement = (None if p.replacement == "delete" else special_token_id(tokenizer, p.replacement)
                   if p.replacement in ("mask", "unk") else int(p.replacement))
    scorer = _Scorer(model, providers)
    weights = []
    for e in explanations:
        mask = np.asarray(e.mask, np.float64)
        if mask.ndim == 2:   # a sequence output (T, V): what a perturbed text of any length keeps
            if np.any(mask[:-1]):
                raise InputError("token deletion on a sequence output scores the last position: the target mask "
                                 "must be 0 at every other position")
            mask = mask[-1]
        weights.append(mask.reshape(-1))
    n = len(explanations)
    curves = {order: np.empty((n, p.steps + 1), np.float64) for order in ORDERS}
    fraction = np.zeros(p.steps + 1)
    jobs = []   # (order, step, sample, feeds)
    for i, e in enumerate(explanations):
        units = np.flatnonzero(~np.asarray(e.special, bool))
        if len(units) == 0:
            raise InputError(f"text {i} has no token that is not special: nothing to remove")
        ranks = removal_ranks(np.asarray(e.relevance, np.float64)[units][None], p.seed)
        for step in range(p.steps + 1):
            gone = min(step * p.per_step, len(units)) if p.per_step else math.ceil(step * len(units) / p.steps)
            fraction[step] += gone / len(units) / n
            for order in ORDERS:
                removed = units[ranks[order][0] < gone]
                positions = np.array([q for u in removed for q in e.pieces[u]], np.int64)
                if step == 0 and order == "lerf":   # the unperturbed text, scored once
                    continue
                jobs.append((order, step, i, _perturbed_text(e.feeds, positions, replacement)))
    distinct: Dict[bytes, Dict[str, np.ndarray]] = {}   # each distinct perturbed text is run once
    keys = []
    for _, _, _, feeds in jobs:
        key = b"|".join(k.encode() + v.tobytes() for k, v in sorted(feeds.items()))
        distinct.setdefault(key, feeds)
        keys.append(key)
    by_length: Dict[int, list] = {}
    for key, feeds in distinct.items():
        by_length.setdefault(len(feeds["input_ids"]), []).append(key)
    outputs = {}
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            part = group[start:start + batch_size]
            out = scorer({k: np.stack([distinct[key][k] for key in part]) for k in distinct[part[0]]})
            outputs.update(zip(part, out))
    for (order, step, i, _), key in zip(jobs, keys):
        w = weights[i]
        curves[order][i, step] = float(outputs[key].reshape(-1, len(w))[-1] @ w)
    curves["lerf"][:, 0] = curves["morf"][:, 0]
    return Curves(curves["morf"], curves["lerf"], fraction)


# --- comparing methods -----------------------------------------------------------------------

MethodLike = Union[str, object]   # "random", a composite name/JSON path/dict/Composite


def relevance_of(model: ModelLike, x: np.ndarray, method: MethodLike, target: np.ndarray, seed: int = 0,
                 batch_size: int = 256, providers=None) -> np.ndarray:
    """The heatmaps of ``method``: "random" (seeded standard normal noise shaped like x) or any
    composite (LRP presets, "gradient", "gradient_x_input", a JSON file, a Composite)."""
    if isinstance(method, str) and method == "random":
        return np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    from .explainer import Explainer

    return Explainer(model, method, providers=providers).explain(x, target=target, batch_size=batch_size).relevance


def compare(model: ModelLike, x: np.ndarray, methods: Union[Sequence[MethodLike], Mapping[str, MethodLike]],
            target=None, perturbation: Perturbation = Perturbation(), layout: Optional[str] = None,
            image_shape: Optional[Tuple[int, int]] = None, normalize: bool = False, batch_size: int = 2048,
            providers=None) -> Dict[str, Curves]:
    """{method name: Curves} for each method on the same inputs, targets and perturbation.
    ``methods``: names (``"random"``, composite presets, JSON paths) or {label: method}."""
    x = np.asarray(x, dtype=np.float32) if np.asarray(x).dtype.kind in "fiu" else np.asarray(x)
    named = dict(methods) if isinstance(methods, Mapping) else {str(getattr(m, "name", m)): m for m in methods}
    if not named:
        raise InputError("no methods to evaluate")
    scorer = _Scorer(model, providers)
    scorer.check(x)
    out = np.concatenate([scorer(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    target = _targets(target, len(x), out.shape[1], out.argmax(axis=1))
    results = {}
    for label, method in named.items():
        relevance = relevance_of(model, x, method, target, perturbation.seed, providers=providers)
        results[label] = pixel_flipping(model, x, relevance, target, perturbation, layout, image_shape, normalize,
                                        batch_size, _scorer=scorer)
    return results


# --- reporting -------------------------------------------------------------------------------

def _rows(results: Mapping[str, Curves]):
    for name, c in results.items():
        se = c.abpc_per_sample().std(ddof=1) / math.sqrt(len(c.morf)) if len(c.morf) > 1 else float("nan")
        yield name, c.auc_morf, c.auc_lerf, c.abpc, se


def table_markdown(results: Mapping[str, Curves]) -> str:
    lines = ["| method | AUC MoRF | AUC LeRF | ABPC | ± s.e. |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {m:.3f} | {l:.3f} | {a:.3f} | {se:.3f} |" for name, m, l, a, se in _rows(results)]
    return "\n".join(lines) + "\n"


def table_csv(results: Mapping[str, Curves]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "auc_morf", "auc_lerf", "abpc", "abpc_se"])
    writer.writerows([name, f"{m:.6g}", f"{l:.6g}", f"{a:.6g}", f"{se:.6g}"] for name, m, l, a, se in _rows(results))
    return buf.getvalue()


def plot_curves(results: Mapping[str, Curves], path, title: str = "", ylabel: str = "score of the explained class",
                xlabel: str = "pixels replaced (%)") -> None:
    """MoRF (solid) and LeRF (dashed) mean curves of every method, one colour per method, in a
    PNG at ``path`` (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("the plot needs matplotlib: pip install 'lrp_onnx[evaluate]'") from None
    from .files import write_atomically

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    for i, (name, c) in enumerate(results.items()):
        colour = f"C{i % 10}"
        ax.plot(c.fraction * 100, c.morf.mean(0), "-", color=colour, label=f"{name}: ABPC {c.abpc:.2f}")
        ax.plot(c.fraction * 100, c.lerf.mean(0), "--", color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "pixel flipping", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="solid: most relevant first (MoRF)\ndashed: least relevant first (LeRF)", title_fontsize=8)
    fig.tight_layout()
    write_atomically(os.fspath(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_report(results: Mapping[str, Curves], out_dir, title: str = "", **plot) -> Dict[str, str]:
    """curves.png, quality.md and quality.csv in ``out_dir``; returns {kind: path}. ``plot``:
    ``plot_curves``'s ylabel and xlabel."""
    from .files import write_atomically

    os.makedirs(out_dir, exist_ok=True)
    paths = {"plot": os.path.join(out_dir, "curves.png"), "markdown": os.path.join(out_dir, "quality.md"),
             "csv": os.path.join(out_dir, "quality.csv")}
    def writer(text):
        def write(tmp):
            with open(tmp, "w") as fh:
                fh.write(text)
        return write

    for kind, text in (("markdown", table_markdown(results)), ("csv", table_csv(results))):
        write_atomically(paths[kind], writer(text))
    plot_curves(results, paths["plot"], title, **plot)
    return paths
