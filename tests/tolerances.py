"""The tests' tolerances: float32 results against float64 references, bounds that hold on any CPU.

Two kinds (exporters/check.py derives the first; it is also export_module's check):

* deep networks (VGG-16, ResNets, the zoo, Inception): float32 rounding is amplified layer
  after layer by a factor that depends on the weights, so the tolerance is MEASURED: the
  reference runs in float64 (t64) and once more in float32 (t32, an independent float32
  implementation of the same function: torch, zennit or the oracle itself in float32), and a
  float32 result must satisfy  max|got - t64| <= K * max|t32 - t64| + floor  with K = 4 and
  floor = 8 * EPS32 * scale * sqrt(depth) (``within_envelope``; ``envelope_ratio`` <= 1);
* tiny graphs (depth <= 3, fan-in <= a few hundred): an a-priori bound, ``shallow_bound``:
  a float32 dot product of n terms is off by <= n * EPS32 * sum|terms| (Higham, Accuracy and
  Stability, 3.1); with sum|terms| <= FAN_SLACK * max|result| on these well-conditioned
  graphs, depth d gives <= d * n * FAN_SLACK * EPS32 * max|reference|.

Each deep test prints its ratio (observed error / tolerance); pytest -s shows them.
"""
from __future__ import annotations

import math

import numpy as np

from exporters.check import EPS32, FLOOR_ULPS, K, envelope_ratio, float32_tolerance, module_depth, roundoff_floor, torch_float64  # noqa: F401

#: sum|terms| / max|result| allowed on the tiny graphs (their weights and inputs are O(1) normals:
#: the sums cancel by a factor of about sqrt(n), 16 covers fan-ins up to ~256 with margin).
FAN_SLACK = 16.0


def shallow_bound(depth: int, fan_in: int, scale: float) -> float:
    """depth * fan_in * FAN_SLACK * EPS32 * scale: the a-priori float32 bound of a tiny graph."""
    return max(int(depth), 1) * max(int(fan_in), 1) * FAN_SLACK * EPS32 * float(scale)


def within_envelope(got, ref32, ref64, depth: int, label: str = "", scale: float = None) -> float:
    """The ratio max|got - ref64| / (K * max|ref32 - ref64| + floor), printed with ``label``;
    the caller asserts ratio <= 1 (or, for a wrong variant, > 1)."""
    ratio = envelope_ratio(got, ref32, ref64, depth, scale)
    ref64 = np.asarray(ref64, np.float64)
    s = float(np.abs(ref64).max()) if scale is None else float(scale)
    print(f"\n  {label}: max|got - f64| = {float(np.abs(np.asarray(got, np.float64) - ref64).max()) / s:.3g}, "
          f"max|f32 - f64| = {float(np.abs(np.asarray(ref32, np.float64) - ref64).max()) / s:.3g} (of the scale), "
          f"error / tolerance = {ratio:.3g}")
    return ratio


def l2_envelope_ratio(got, ref32, ref64, depth: int) -> float:
    """The same envelope in the L2 norm: ||got - ref64|| / (K ||ref32 - ref64|| + floor * sqrt(n)),
    for comparisons whose max norm is ill-conditioned (ReLU switches in a gradient)."""
    ref64 = np.asarray(ref64, np.float64)
    diff = np.linalg.norm(np.asarray(got, np.float64) - ref64)
    own = np.linalg.norm(np.asarray(ref32, np.float64) - ref64)
    floor = roundoff_floor(np.abs(ref64).max(), depth) * math.sqrt(ref64.size)
    return float(diff / (K * own + floor))


def robust_float32_tolerance(ref32, ref64, depth: int, scale: float, fraction: float) -> float:
    """K * q + floor with q the (1 - fraction) quantile of |ref32 - ref64| instead of its max:
    for comparisons where at most ``fraction`` of the elements are ill-conditioned (MaxPool
    near-ties: a float32 run may move a winner, in the reference's float32 run as much as in
    the result under test), so that one moved winner in ref32 does not widen the envelope of
    all the well-conditioned elements."""
    own = np.abs(np.asarray(ref32, np.float64) - np.asarray(ref64, np.float64)).ravel()
    return K * float(np.quantile(own, 1.0 - fraction)) + roundoff_floor(scale, depth)
