"""Region targets: explain class k over a region of a dense (N, C, H, W) output (segmentation).

The explained score is the sum of class k's output over the region M, f(x) = sum_{(h, w) in M}
y_k[h, w], so the relevance put on the output is R = y * mask with mask[k] = M and 0 for every
other class (Montavon et al. 2019: LRP starts from the explained score, R = f(x); a class
summed over pixels is one such f). ``Explainer.explain(x, target=RegionTarget(k, region))`` builds
that mask; its ``Explanation.target`` is k for every sample and ``total`` is sum(y * mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError

#: The rank of a segmentation output (N, C, H, W).
DENSE_RANK = 4

Region = Union[np.ndarray, Sequence[int]]


@dataclass(frozen=True)
class RegionTarget:
    """Class ``class_index`` over ``region``: a boolean (H, W) mask (every sample) or (N, H, W)
    mask (one per sample), or a box (y0, y1, x0, x1) of output pixels, half-open as Python
    slices (rows y0 .. y1 - 1, columns x0 .. x1 - 1)."""

    class_index: int
    region: Region

    def mask(self, shape: Tuple[Optional[int], ...]) -> np.ndarray:
        """The ``lrp_target_mask`` for an output of ``shape`` (N, C, H, W); H and W may be None
        (known only at run time) when the region is a mask, which then gives them. InputError
        for a non-4-D output, a class out of range, or a region of the wrong shape or empty."""
        if len(shape) != DENSE_RANK:
            raise InputError(f"a region target needs a segmentation output (N, C, H, W); this model's output has "
                             f"shape {_text(shape)}: pass a class index or a mask shaped like the output instead")
        n, classes, height, width = shape
        k = self.class_index
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InputError(f"a region target's class must be an int, got {k!r}")
        if classes is None:
            raise InputError(f"the model output's class axis is known only when it runs ({_text(shape)}): "
                             f"pass a mask shaped like the output instead")
        if not 0 <= k < classes:
            raise InputError(f"region target class {k} is out of range: the model has {classes} classes")
        region = self._region(n, height, width)
        mask = np.zeros((n, classes) + region.shape[1:], np.float32)
        mask[:, k] = region
        return mask

    def _region(self, n: int, height: Optional[int], width: Optional[int]) -> np.ndarray:
        """The region as a float (n, H, W) 0/1 array, checked against the output's H and W."""
        if _is_box(self.region):
            if height is None or width is None:
                raise InputError(f"the model output's height and width are known only when it runs: give the region "
                                 f"as a boolean (H, W) mask instead of the box {tuple(self.region)}")
            y0, y1, x0, x1 = (int(v) for v in self.region)
            if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
                raise InputError(f"region box (y0, y1, x0, x1) = {(y0, y1, x0, x1)} is empty or outside the "
                                 f"{height}x{width} output: need 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width}")
            region = np.zeros((1, height, width), np.float32)
            region[:, y0:y1, x0:x1] = 1.0
            return np.broadcast_to(region, (n, height, width))
        region = np.asarray(self.region)
        if region.dtype != bool and not (region.dtype.kind in "iuf" and np.isin(region, (0, 1)).all()):
            raise InputError(f"a region must be a boolean mask (or 0/1 values) or a box (y0, y1, x0, x1); got an array "
                             f"of dtype {region.dtype} with other values (for weights, pass a mask shaped like the "
                             f"output as target)")
        expected = tuple(d if d is not None else g for d, g in zip((height, width), region.shape[-2:]))
        if region.ndim not in (2, 3) or region.shape[-2:] != expected or (region.ndim == 3 and len(region) != n):
            raise InputError(f"a region mask must be (H, W) = {_text((height, width))} or (N, H, W) = "
                             f"{_text((n, height, width))} like the output's pixels, got {region.shape}")
        region = np.broadcast_to(region.astype(np.float32), (n,) + region.shape[-2:])
        empty = [i for i in range(n) if not region[i].any()]
        if empty:
            raise InputError(f"the region is empty for sample(s) {empty}: nothing to explain")
        return region


def _is_box(region) -> bool:
    return isinstance(region, (tuple, list)) and len(region) == 4 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in region)


def _text(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def parse_region(text: str) -> RegionTarget:
    """``CLASS:Y0:Y1:X0:X1`` (the command line's --target-region) as a RegionTarget with a box."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 5:
        raise InputError(f"--target-region must be CLASS:Y0:Y1:X0:X1 (five integers), got {text!r}")
    return RegionTarget(values[0], tuple(values[1:]))
