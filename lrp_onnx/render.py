"""Heatmaps and PNGs with numpy and zlib only (no display, no matplotlib).

``tutorial_heatmap`` draws relevance as the LRP tutorial does; ``colorize`` with zennit's
colour maps ("bwr", "coldnhot"); ``channel_sum`` makes a 2-D map of a channelled relevance;
``grid`` tiles images side by side; ``overlay`` lays a heatmap over its input; ``write_png``
writes the result. ``read_image`` (PNG/JPEG) needs Pillow, the optional ``images`` extra.
"""
from __future__ import annotations

import struct
import zlib
from typing import Sequence

import numpy as np

from .errors import InputError
from .files import write_atomically

# matplotlib's "seismic": dark blue, blue, white, red, dark red at 0, .25, .5, .75, 1.
_SEISMIC = np.array([[0.0, 0.0, 0.3], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]])

#: zennit's colour maps as (palette index 0..255, RGB) anchors, linear in between.
CMAPS = {
    "bwr": ((0, 128, 255), ((0, 0, 1), (1, 1, 1), (1, 0, 0))),
    "coldnhot": ((0, 64, 128, 170, 212, 255), ((0, 1, 1), (0, 0, 1), (0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1))),
}
COLORMAPS = ("tutorial",) + tuple(CMAPS)


def _check_2d(relevance) -> np.ndarray:
    relevance = np.asarray(relevance, np.float64)
    if relevance.ndim != 2:
        raise ValueError(f"a heatmap needs a 2-D map, got shape {relevance.shape} (sum the channels first)")
    return relevance


def tutorial_heatmap(relevance: np.ndarray) -> np.ndarray:
    """RGB floats in [0, 1] of a 2-D relevance map: the seismic colormap darkened by 15%, range
    symmetric at b = 10 * (mean |R|^3)^(1/3) (the tutorial's ``heatmap``)."""
    relevance = _check_2d(relevance)
    b = 10 * (np.abs(relevance) ** 3).mean() ** (1 / 3)
    t = np.clip(0.5 + relevance / (2 * b), 0, 1) if b > 0 else np.full(relevance.shape, 0.5)
    position = t * (len(_SEISMIC) - 1)
    low = np.minimum(position.astype(int), len(_SEISMIC) - 2)
    frac = (position - low)[..., None]
    return 0.85 * (_SEISMIC[low] * (1 - frac) + _SEISMIC[low + 1] * frac)


def colorize(relevance: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """RGB floats of a 2-D relevance map in a zennit colour map, normalised as zennit's
    ``imgify(symmetric=True)``: -max|R| -> 0, 0 -> the middle, max|R| -> 1."""
    if cmap == "tutorial":
        return tutorial_heatmap(relevance)
    if cmap not in CMAPS:
        raise InputError(f"unknown colour map {cmap!r}; known: {', '.join(COLORMAPS)}")
    relevance = _check_2d(relevance)
    vmax = np.abs(relevance).max()
    t = 0.5 + relevance / (2 * vmax) if vmax > 0 else np.full(relevance.shape, 0.5)
    indices, colors = CMAPS[cmap]
    position = t * 255
    return np.stack([np.interp(position, indices, [c[i] for c in colors]) for i in range(3)], axis=-1)


def channel_sum(relevance: np.ndarray, axis: int = 0) -> np.ndarray:
    """A 2-D map of one sample's relevance: summed over the channel ``axis`` of a 3-D array
    (0 for CHW, -1 for HWC); a 2-D array is returned as it is."""
    relevance = np.asarray(relevance)
    if relevance.ndim == 2:
        return relevance
    if relevance.ndim != 3:
        raise ValueError(f"channel_sum needs a 2-D or 3-D map, got shape {relevance.shape}")
    return relevance.sum(axis=axis)


def gray(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB floats of a 2-D image with values in [low, high]."""
    scaled = np.clip((np.asarray(image, np.float64) - low) / (high - low), 0, 1)
    return np.repeat(scaled[..., None], 3, axis=-1)


def overlay(image: np.ndarray, relevance: np.ndarray, cmap: str = "tutorial", alpha: float = 0.8) -> np.ndarray:
    """The heatmap of ``relevance`` (2-D) over ``image`` (RGB floats, same height and width),
    shown in gray: each pixel's heatmap weight is ``alpha`` times its |R| relative to the
    heatmap's own range, so irrelevant pixels show the image."""
    relevance = _check_2d(relevance)
    image = np.asarray(image, np.float64)
    if image.shape[:2] != relevance.shape:
        raise ValueError(f"overlay: image {image.shape[:2]} and relevance {relevance.shape} differ in size")
    if cmap == "tutorial":
        scale = 10 * (np.abs(relevance) ** 3).mean() ** (1 / 3) / 2   # where the tutorial's map saturates
    else:
        scale = np.abs(relevance).max()
    weight = alpha * np.clip(np.abs(relevance) / scale, 0, 1)[..., None] if scale > 0 else 0.0
    shade = image.mean(axis=-1, keepdims=True)
    return (1 - weight) * shade + weight * colorize(relevance, cmap)


def upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel repeated ``scale`` x ``scale`` times (nearest neighbour)."""
    return np.kron(rgb, np.ones((scale, scale, 1)))


def grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 1, gap: int = 2) -> np.ndarray:
    """Tiles equal-size RGB images into rows, each pixel repeated ``scale`` times, on white."""
    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    canvas = np.ones((len(rows) * (h + gap) + gap, ncol * (w + gap) + gap, 3))
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            canvas[gap + i * (h + gap):gap + i * (h + gap) + h, gap + j * (w + gap):gap + j * (w + gap) + w] = upscale(tile, scale)
    return canvas


def write_png(path, rgb: np.ndarray) -> None:
    """Write RGB floats in [0, 1] (H, W, 3) as an 8-bit PNG (written to a temporary file, then
    moved into place, so a failure leaves nothing half-written)."""
    data = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    height, width = data.shape[:2]
    raw = b"".join(b"\x00" + data[row].tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(png)

    write_atomically(path, write)


def pillow():
    """The PIL.Image module, or a clear error naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading PNG/JPEG images needs Pillow: pip install 'lrp_onnx[images]'") from None
    return Image


def read_image(path, mode: str = "RGB"):
    """A PNG/JPEG file as a PIL image in ``mode`` ("RGB" or "L"); needs Pillow."""
    Image = pillow()
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except (OSError, ValueError) as exc:   # Pillow's UnidentifiedImageError is an OSError
        raise InputError(f"{path} is not a readable image ({exc})") from None
