"""Run the compiled explainer: ``Explainer(model).explain(x)`` is one ``session.run`` per batch."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort

from .compile import (MASK_INPUT, RELEVANCE_OUTPUT, CompiledExplainer, check_layer_names, compile_explainer, prepare,
                      save_model)
from .composites import CompositeLike, resolve_composite
from .errors import InputError
from .load import PROTOBUF_LIMIT, ModelLike, serialized_size


def create_session(model: onnx.ModelProto, providers: Optional[Sequence] = None) -> ort.InferenceSession:
    """An onnxruntime session of ``model`` on ``providers`` (names or (name, options) pairs, in
    order of preference; None: every available one). A provider that this onnxruntime lacks,
    or that fails to start, is an InputError instead of onnxruntime's silent CPU fallback."""
    available = ort.get_available_providers()
    wanted = [p if isinstance(p, str) else p[0] for p in providers or ()]
    missing = [name for name in wanted if name not in available]
    if missing:
        raise InputError(f"execution provider(s) {missing} not available in this onnxruntime "
                         f"({ort.__version__}); available: {available}")
    options = ort.SessionOptions()
    # Weights are used as they are, not repacked into a second copy: the same speed on VGG-16
    # and ResNet-50, about 0.7 GB less memory for VGG-16 (README, Benchmarks).
    options.add_session_config_entry("session.disable_prepacking", "1")
    if serialized_size(model) < PROTOBUF_LIMIT:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=providers or available)
    else:   # above protobuf's limit: through a file with external data
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "explainer.onnx")
            save_model(model, path, external_data=True)
            session = ort.InferenceSession(path, options, providers=providers or available)
    failed = [name for name in wanted if name not in session.get_providers()]
    if failed:
        raise InputError(f"execution provider(s) {failed} failed to start (see onnxruntime's log); "
                         f"the session runs on {session.get_providers()}")
    return session


@dataclass
class Explanation:
    """The result of ``Explainer.explain``.

    relevance: shaped like x. output: the model's output (logits). layers: {tensor: relevance}.
    target: the explained class per sample (None when a mask was given). ``total`` is the
    relevance put on the output per sample, ``conservation`` sum(relevance) / total per sample
    (1 for a conservative rule set, Montavon et al. 2019 eq. 2).
    """

    relevance: np.ndarray
    output: np.ndarray
    layers: Dict[str, np.ndarray] = field(default_factory=dict)
    target: Optional[np.ndarray] = None
    total: Optional[np.ndarray] = None

    @property
    def conservation(self) -> np.ndarray:
        summed = self.relevance.reshape(len(self.relevance), -1).sum(axis=1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return summed / self.total


class Explainer:
    """Compile ``model`` with ``composite`` once; explain batches with one onnxruntime run.

    model: a path or an onnx.ModelProto. composite: a preset name, a JSON file, a dict or a
    Composite. providers: onnxruntime execution providers (None: onnxruntime's default).
    maxpool: "winner" or "avg" to override the composite's MaxPool reading.
    """

    def __init__(self, model: ModelLike, composite: CompositeLike = "epsilon_gamma_box",
                 providers: Optional[Sequence] = None, maxpool: Optional[str] = None):
        self.composite = resolve_composite(composite)
        self.maxpool = maxpool
        self.providers = providers
        self._prepared = prepare(model)
        self.compiled = compile_explainer(self._prepared, self.composite, maxpool)   # its model is released below
        self._sessions: Dict[bool, Tuple[ort.InferenceSession, CompiledExplainer]] = {}
        self._lock = threading.Lock()
        self._session(False)   # build the default session now: errors surface at construction

    @property
    def model(self) -> onnx.ModelProto:
        """The standalone explainer model, compiled again on each access: the session holds the
        weights, and the Explainer does not keep a second copy of them."""
        return compile_explainer(self._prepared, self.composite, self.maxpool).model

    @property
    def forward_model(self) -> onnx.ModelProto:
        """The canonicalized model that the explainer extends (already in memory): its nodes,
        inputs and tensor names are those of the explainer's forward part."""
        return self._prepared.graph.model

    @property
    def rules(self):
        """{node name: rule} for every layer that takes a rule."""
        return dict(self.compiled.rules)

    @property
    def layer_names(self):
        """The tensors whose relevance ``explain(..., layers=...)`` can return, in forward order."""
        return list(self.compiled.layer_tensors)

    def _session(self, with_layers: bool):
        """The default session, or (built on first use) one whose explainer also outputs the
        relevance of every tensor in ``layer_names``; a run fetches only what was asked for."""
        with self._lock:
            if with_layers not in self._sessions:
                compiled = (compile_explainer(self._prepared, self.composite, self.maxpool, self.layer_names)
                            if with_layers else self.compiled)
                session = create_session(compiled.model, self.providers)
                compiled = dataclasses.replace(compiled, model=None)   # the session has its own copy
                if not with_layers:
                    self.compiled = compiled
                self._sessions[with_layers] = (session, compiled)
            return self._sessions[with_layers]

    def _input_array(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise InputError(f"input must be a numeric array, got dtype {x.dtype}")
        session, compiled = self._session(False)
        meta = session.get_inputs()[0]
        expected = meta.shape
        if x.ndim != len(expected):
            raise InputError(f"input has shape {x.shape}; the model expects rank {len(expected)}: {tuple(expected)}")
        for axis, (got, want) in enumerate(zip(x.shape, expected)):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputError(f"input has shape {x.shape}; the model expects {tuple(expected)} (axis {axis})")
        if x.shape[0] == 0:
            raise InputError("the input batch is empty")
        if not np.all(np.isfinite(x)):
            raise InputError("the input contains NaN or Inf values")
        with np.errstate(over="ignore"):
            x = x.astype(np.float32, copy=False)   # documented: integer and float64 inputs are cast
        if not np.all(np.isfinite(x)):
            raise InputError("the input has values beyond float32's range (|x| > 3.4e38)")
        return x

    def _mask(self, target, output_shape) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        n, classes = output_shape[0], int(np.prod(output_shape[1:]))
        if target is None:
            return np.full(output_shape, np.nan, np.float32), None
        target = np.asarray(target)
        if target.ndim == 0 or target.shape == (n,):
            if target.dtype.kind not in "iu":
                raise InputError(f"target must be an int, one int per sample, or a mask; got dtype {target.dtype}")
            target = np.broadcast_to(target, (n,)).astype(np.int64)
            if np.any(target < 0) or np.any(target >= classes):
                raise InputError(f"target {target.tolist()} is out of range: the model has {classes} outputs")
            mask = np.zeros((n, classes), np.float32)
            mask[np.arange(n), target] = 1.0
            return mask.reshape(output_shape), target
        if target.shape != tuple(output_shape):
            raise InputError(f"a target mask must have the output's shape {tuple(output_shape)}, got {target.shape}")
        if not np.all(np.isfinite(target)):
            raise InputError("the target mask contains NaN or Inf values")
        return target.astype(np.float32), None

    def _output_shape(self, session, x) -> Tuple[int, ...]:
        shape = session.get_outputs()[0].shape
        dims = [x.shape[0]] + [d if isinstance(d, int) else None for d in shape[1:]]
        if any(d is None for d in dims):
            raise InputError(f"the model output has dynamic dimensions {shape}; pass target=None or an int")
        return tuple(dims)

    def explain(self, x, target=None, layers: Sequence[str] = (), batch_size: Optional[int] = None) -> Explanation:
        """Explain a batch ``x``. target: None (predicted class), an int, one int per sample,
        or a mask shaped like the output (relevance at the output = output * mask).
        layers: tensor names (see ``layer_names``) whose relevance to return too.
        batch_size: run at most this many samples at once (bounds onnxruntime's memory; each
        sample's explanation does not depend on the others)."""
        layers = tuple(dict.fromkeys(layers))
        check_layer_names(layers, self.compiled.layer_tensors)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
        x = self._input_array(x)
        session, compiled = self._session(bool(layers))
        mask, resolved = self._mask(target, self._output_shape(session, x))
        wanted = [compiled.output_name, RELEVANCE_OUTPUT] + [compiled.layer_outputs[t] for t in layers]
        step = batch_size or len(x)
        chunks = [session.run(wanted, {compiled.input_name: x[i:i + step], MASK_INPUT: mask[i:i + step]})
                  for i in range(0, len(x), step)]
        results = chunks[0] if len(chunks) == 1 else [np.concatenate(parts) for parts in zip(*chunks)]
        output, relevance = results[0], results[1]
        if target is None:
            flat = output.reshape(len(output), -1)
            resolved = flat.argmax(axis=1)
            mask = np.zeros_like(flat)
            mask[np.arange(len(flat)), resolved] = 1.0
        total = (output.reshape(len(output), -1).astype(np.float64) * mask.reshape(len(output), -1)).sum(axis=1)
        return Explanation(relevance, output, dict(zip(layers, results[2:])), resolved, total)

    def save(self, path, layers: Sequence[str] = (), external_data: bool = False) -> None:
        """Write the standalone explainer (inputs: the model input and ``lrp_target_mask``;
        outputs: the model output, ``lrp_relevance`` and ``lrp_relevance:<tensor>`` per layer).
        external_data: tensors in ``<name>.data`` beside it (for explainers above 2 GB)."""
        layers = tuple(dict.fromkeys(layers))
        compile_explainer(self._prepared, self.composite, self.maxpool, layers).save(path, external_data=external_data)
