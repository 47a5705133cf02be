"""Images in: a PNG/JPEG file turned into a model input as a named preprocessing says
(resize, pixel range, mean/std, layout); and relevance out as a 2-D map per sample.

A preprocessing is a preset name ("imagenet", "mnist", "none") or a JSON file with the keys of
``Preprocess`` (optionally {"preset": name, ...overrides}). Unset sizes and modes follow the
model's input shape, so "none" fits any image model.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Tuple

import numpy as np

from .composites import IMAGENET_MEAN, IMAGENET_STD
from .errors import InputError
from .render import channel_sum, read_image

LAYOUTS = ("auto", "NCHW", "NHWC", "flat")


def channels_last(sample_shape: Sequence) -> bool:
    """A 3-D sample is (H, W, C) rather than (C, H, W) when its last axis looks like channels
    (1 or 3) and its first does not."""
    return sample_shape[-1] in (1, 3) and sample_shape[0] not in (1, 3)


@dataclass(frozen=True)
class Preprocess:
    """mode: "RGB", "L" or "auto" (the model's channel count). size: (height, width), None for
    the model's (the image is centre-cropped to that aspect ratio, then resized bilinearly).
    range: what pixel values 0 and 255 become. mean/std: per channel, applied after range.
    layout: "NCHW", "NHWC", "flat" (row-major, one channel) or "auto" (from the model's input
    shape). invert: 255 - pixel first (dark strokes on white paper for white-on-black models)."""

    mode: str = "auto"
    size: Optional[Tuple[int, int]] = None
    range: Tuple[float, float] = (0.0, 1.0)
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    layout: str = "auto"
    invert: bool = False


PRESETS = {
    "none": Preprocess(),
    "imagenet": Preprocess(mode="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "mnist": Preprocess(mode="L", range=(-1.0, 1.0)),
}


def preprocess_from(spec: str) -> Preprocess:
    """A preset name or a JSON file (see ``Preprocess``)."""
    if spec in PRESETS:
        return PRESETS[spec]
    if not spec.endswith(".json"):
        raise InputError(f"unknown preprocessing {spec!r}; use {', '.join(PRESETS)} or a .json file")
    try:
        with open(spec) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"preprocessing file not found: {spec}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{spec} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{spec}: a preprocessing must be a JSON object")
    base = PRESETS.get(data.pop("preset", "none"))
    known = {f.name for f in fields(Preprocess)}
    if base is None or set(data) - known:
        raise InputError(f"{spec}: unknown preset or keys {sorted(set(data) - known)}; keys: {', '.join(sorted(known))}")
    spec_ = replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    if spec_.layout not in LAYOUTS or spec_.mode not in ("auto", "RGB", "L"):
        raise InputError(f"{spec}: layout must be one of {LAYOUTS} and mode one of auto, RGB, L")
    return spec_


@dataclass(frozen=True)
class Fitted:
    """A preprocessing resolved against a model input shape (N, ...)."""

    mode: str
    size: Tuple[int, int]
    layout: str


def fit(spec: Preprocess, input_shape: Sequence) -> Fitted:
    """Resolve "auto" mode, size and layout from the model's input shape (batch axis first)."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in input_shape[1:]]
    layout = spec.layout
    if layout == "auto":
        if len(dims) == 1:
            layout = "flat"
        elif len(dims) == 3 and (dims[0] in (1, 3) or dims[2] in (1, 3)):
            layout = "NHWC" if channels_last(dims) else "NCHW"
        else:
            raise InputError(f"cannot feed an image to a model input of shape {tuple(input_shape)}; "
                             "give a --preprocess JSON with a layout, or .npy arrays")
    if layout == "flat":
        channels = 1
        side = math.isqrt(dims[0]) if len(dims) == 1 and dims[0] else 0
        model_size = (side, side) if side * side == (dims[0] or -1) else None
    else:
        if len(dims) != 3:
            raise InputError(f"layout {layout} needs a rank-4 model input, the model takes {tuple(input_shape)}")
        channels, h, w = (dims[0], dims[1], dims[2]) if layout == "NCHW" else (dims[2], dims[0], dims[1])
        model_size = (h, w) if h and w else None
    size = tuple(spec.size) if spec.size else model_size
    if size is None:
        raise InputError(f"the model input {tuple(input_shape)} has no fixed image size; give one in a --preprocess JSON")
    mode = spec.mode if spec.mode != "auto" else ("RGB" if channels == 3 else "L")
    return Fitted(mode, size, layout)


def load_image(path, spec: Preprocess, fitted: Fitted) -> Tuple[np.ndarray, np.ndarray]:
    """(one model input sample, the resized image as RGB floats in [0, 1] for display)."""
    return image_to_input(read_image(path, fitted.mode), spec, fitted)


def image_to_input(image, spec: Preprocess, fitted: Fitted) -> Tuple[np.ndarray, np.ndarray]:
    """A PIL image -> (model input sample, display RGB): centre-crop to the target aspect
    ratio, resize bilinearly, then range, mean/std and layout."""
    height, width = fitted.size
    w, h = image.size
    if w * height > h * width:           # too wide: crop the width
        crop = round(h * width / height)
        box = ((w - crop) // 2, 0, (w - crop) // 2 + crop, h)
    else:
        crop = round(w * height / width)
        box = (0, (h - crop) // 2, w, (h - crop) // 2 + crop)
    image = image.convert(fitted.mode).crop(box).resize((width, height), resample=2)   # 2: bilinear
    pixels = np.asarray(image, np.float32).reshape(height, width, -1)
    if spec.invert:
        pixels = 255 - pixels
    display = np.repeat(pixels, 3 // pixels.shape[-1], axis=-1) / 255.0
    low, high = spec.range
    x = low + pixels / 255.0 * (high - low)
    if spec.mean is not None:
        x = x - np.asarray(spec.mean, np.float32)
    if spec.std is not None:
        x = x / np.asarray(spec.std, np.float32)
    if fitted.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    elif fitted.layout == "flat":
        x = x.reshape(-1)
    return np.ascontiguousarray(x, np.float32), display


def relevance_map(relevance: np.ndarray, layout: str = "auto", size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """One sample's relevance as a 2-D map: summed over its channel axis (NCHW: the first,
    NHWC: the last, "auto": a first or last axis of 1 or 3), a flat vector reshaped to ``size``
    or to a square when it is one, else drawn as one row."""
    r = np.asarray(relevance)
    if r.ndim == 1:
        side = math.isqrt(r.size)
        shape = size if size and size[0] * size[1] == r.size else (side, side) if side * side == r.size else (1, r.size)
        return r.reshape(shape)
    if r.ndim == 2:
        return r
    if r.ndim == 3:
        last = layout == "NHWC" or (layout == "auto" and channels_last(r.shape))
        return channel_sum(r, -1 if last else 0)
    raise InputError(f"cannot draw relevance of shape {r.shape} as an image")
