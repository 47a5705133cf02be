"""ZBox bounds read in the layout of the tensor the user names, carried to the layer's input.

A Keras or JAX export takes NHWC input and transposes it before the first Conv; bounds given
for that input, per element as (H, W, C) or per channel along its last axis, must reach the
Conv's NCHW input transposed, not reshaped. The ops between the named tensor T and the layer
input L are run once on the flat index of each element of T: if they only move elements
(Transpose, Reshape, Flatten, Squeeze, Slice, ...), the result says which element of T every
element of L is, and the bounds follow the same way.

In-model preprocessing (Sub of the mean, Div by the std, Mul by a scale, by constants) makes
every element of L an affine function of one element of T, L_j = s_j T_m(j) + c_j. Three runs
(on zeros, ones and the flat index) give c, s and m; a run on a random sample confirms the
form to float32 rounding, and the bounds at L are l' = s l + c, h' = s h + c where s > 0 and,
where s < 0 (a Mul by a negative constant swaps low and high), l' = s h + c, h' = s l + c: that
needs the other bound too (``other``; without it a negative s is refused). Anything else
between T and L (a ReLU, an op that mixes elements) is refused with an error, never read
silently in the wrong layout. A scalar box has no layout and is used at the layer as it is, unless the user
names a tensor (then it is carried as well).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

from ..errors import CompositeError

#: float32 holds every integer index exactly below 2^24 elements per sample.
MAX_INDEXED = 2 ** 24


def _run_between(model: onnx.ModelProto, source: str, target: str, sample: np.ndarray) -> np.ndarray:
    """The model's ``target`` for ``sample`` fed at ``source`` (a batch of one)."""
    part = onnx.utils.Extractor(model).extract_model([source], [target])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(part.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {source: sample[None].astype(np.float32)})[0][0]


#: An affine map is decoded from float32 runs: (index - c) / s is within a few 2^-24 * index of
#: an integer, below 1/4 for indices up to 2^19 ...
MAX_AFFINE_INDEXED = 2 ** 19
#: ... and a random probe may differ from s p + c by a few float32 roundings (a Sub, a Div, a
#: Mul: 3 operations, each 2^-24 relative) of its terms' size; 16 allows for any short chain.
AFFINE_ULPS = 16


def element_map(ctx, source: str, target: str) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(m, s, c): element j of one sample of ``target`` is s[j] * source.ravel()[m[j]] + c[j]
    for constants s != 0 and c (s = 1, c = 0 where the ops only move elements), or None when
    the ops do more than that."""
    graph = ctx.graph
    sample = graph.static_shape(source)
    size = int(np.prod(sample))
    if size >= MAX_INDEXED:
        return None
    run = lambda array: _run_between(graph.model, source, target, array.astype(np.float32)).astype(np.float64)  # noqa: E731
    big = float(2 ** int(np.ceil(np.log2(size + 1))))   # s measured on a run as large as the index
    offset, moved = run(np.zeros(sample)), run(np.arange(size).reshape(sample))
    scale = (run(np.full(sample, big)) - offset) / big
    exact = not offset.any() and np.all(scale == 1)   # moves only: every step is exact
    if not (exact or size < MAX_AFFINE_INDEXED) or not np.all(np.isfinite(scale)) or np.any(scale == 0):
        return None
    decoded = (moved - offset) / scale
    mapped = np.round(decoded)
    if (not np.array_equal(decoded, mapped) if exact else np.abs(decoded - mapped).max() > 0.25) \
            or mapped.min() < 0 or mapped.max() >= size:
        return None
    mapped = mapped.astype(np.int64)
    probe = np.random.default_rng(0).normal(size=sample).astype(np.float32)
    term = scale * probe.ravel()[mapped].astype(np.float64)
    error = np.abs(run(probe) - (term + offset))
    if not (np.all(error == 0) if exact else np.all(error <= AFFINE_ULPS * 2.0 ** -24 * (np.abs(term) + np.abs(offset)))):
        return None
    return mapped, scale, offset


def _channel_axis(mapped: np.ndarray, source_sample: Tuple[int, ...]) -> Optional[int]:
    """The axis of the source that becomes the layer's channel axis (axis 1): the one whose
    coordinate is a function of the layer channel alone, one to one."""
    coords = np.unravel_index(mapped, source_sample)
    channels = mapped.shape[0]
    for axis, coord in enumerate(coords):
        rows = coord.reshape(channels, -1)
        if source_sample[axis] == channels and np.all(rows == rows[:, :1]) and len(np.unique(rows[:, 0])) == channels:
            return axis
    return None


def layer_bound(ctx, layer_name: str, layer_input: str, value, which: str, tensor: Optional[str],
                other=None) -> np.ndarray:
    """A ZBox bound (scalar, per channel or per element of ``tensor``, default the model
    input) as an array that broadcasts against the layer input (with its batch axis);
    ``other``: the opposite bound, used where the ops between multiply by a negative constant."""
    array = np.asarray(value, dtype=np.float32)
    source = tensor or ctx.graph.data_input
    sample = ctx.graph.static_shape(layer_input)
    shape_note = f"{which} bound of ZBox layer {layer_name!r}"
    if source == layer_input:
        if array.size == 1:
            return array.reshape(())
        if sample and array.size == sample[0]:
            return array.reshape((1, -1) + (1,) * (len(sample) - 1))
        if array.size == int(np.prod(sample)):
            return array.reshape((1,) + sample)
        raise CompositeError(
            f"the {shape_note} has {array.size} values; the layer input {layer_input!r} has shape "
            f"{('N',) + sample}: give a scalar, one value per channel ({sample[0] if sample else 1}) or a whole "
            f"sample ({int(np.prod(sample))})")
    if source not in ctx.graph.shapes:
        raise CompositeError(f"the {shape_note} is given for tensor {source!r}, which the model does not have")
    source_sample = ctx.graph.static_shape(source)
    if array.size == 1 and tensor is None:   # a scalar box needs no layout (also on a hidden layer)
        return array.reshape(())
    found = element_map(ctx, source, layer_input)
    if found is None:
        raise CompositeError(
            f"the {shape_note} is given in the layout of {source!r}, but the ops between it and the layer input "
            f"{layer_input!r} do more than move elements and scale or shift them by constants (an activation, an op "
            f"that mixes elements), so the bounds cannot be carried there: give them for the layer input with "
            f"ZBox(..., tensor={layer_input!r})")
    mapped, scale, offset = found
    if np.any(scale < 0) and other is None:
        raise CompositeError(
            f"the {shape_note} is given in the layout of {source!r}, but the ops between it and the layer input "
            f"{layer_input!r} multiply by a negative constant, which would swap low and high: give the bounds for "
            f"the layer input with ZBox(..., tensor={layer_input!r})")
    if array.size == 1 and not offset.any() and np.all(scale == 1):   # moved only: no layout to carry
        return array.reshape(())

    def carry(bound):   # the bound as the layer sees it: the model's own ops run on it in the source's layout
        bound = np.asarray(bound, dtype=np.float32)
        if bound.size == 1 or bound.size == int(np.prod(source_sample)):
            full = np.broadcast_to(bound.reshape(-1), (int(np.prod(source_sample)),)).reshape(source_sample)
        elif axis is not None and bound.size == source_sample[axis]:
            full = np.broadcast_to(bound.reshape([-1 if i == axis else 1 for i in range(len(source_sample))]), source_sample)
        else:
            channels = f"one value per channel ({source_sample[axis]}, its axis {axis + 1}), " if axis is not None else ""
            raise CompositeError(
                f"the {shape_note} has {bound.size} values; it is read in the layout of {source!r}, shape "
                f"{('N',) + source_sample}: give a scalar, {channels}or a whole sample ({int(np.prod(source_sample))})")
        return _run_between(ctx.graph.model, source, layer_input, np.ascontiguousarray(full))[None]

    axis = _channel_axis(mapped, source_sample) if sample else None
    carried = carry(array)
    if np.any(scale < 0):   # s < 0 swaps low and high there (module doc)
        carried = np.where(scale[None] < 0, carry(other), carried)
    return carried
