"""Heatmaps as the tutorial draws them, written as PNG with numpy and zlib only."""
from __future__ import annotations

import struct
import zlib
from typing import Sequence

import numpy as np

from .files import write_atomically

# matplotlib's "seismic": dark blue, blue, white, red, dark red at 0, .25, .5, .75, 1.
_SEISMIC = np.array([[0.0, 0.0, 0.3], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]])


def tutorial_heatmap(relevance: np.ndarray) -> np.ndarray:
    """RGB floats in [0, 1] of a 2-D relevance map: the seismic colormap darkened by 15%, range
    symmetric at b = 10 * (mean |R|^3)^(1/3) (the tutorial's ``heatmap``)."""
    relevance = np.asarray(relevance, np.float64)
    if relevance.ndim != 2:
        raise ValueError(f"a heatmap needs a 2-D map, got shape {relevance.shape} (sum the channels first)")
    b = 10 * (np.abs(relevance) ** 3).mean() ** (1 / 3)
    t = np.clip(0.5 + relevance / (2 * b), 0, 1) if b > 0 else np.full(relevance.shape, 0.5)
    position = t * (len(_SEISMIC) - 1)
    low = np.minimum(position.astype(int), len(_SEISMIC) - 2)
    frac = (position - low)[..., None]
    return 0.85 * (_SEISMIC[low] * (1 - frac) + _SEISMIC[low + 1] * frac)


def gray(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB floats of a 2-D image with values in [low, high]."""
    scaled = np.clip((np.asarray(image, np.float64) - low) / (high - low), 0, 1)
    return np.repeat(scaled[..., None], 3, axis=-1)


def grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 1, gap: int = 2) -> np.ndarray:
    """Tiles equal-size RGB images into rows, each pixel repeated ``scale`` times, on white."""
    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    canvas = np.ones((len(rows) * (h + gap) + gap, ncol * (w + gap) + gap, 3))
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            big = np.kron(tile, np.ones((scale, scale, 1)))
            canvas[gap + i * (h + gap):gap + i * (h + gap) + h, gap + j * (w + gap):gap + j * (w + gap) + w] = big
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
