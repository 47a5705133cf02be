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

from .compile import (MASK_INPUT, SEQUENCE_RANK, CompiledExplainer, check_layer_names, compile_explainer, default_mask,
                      prepare, save_model)
from .composites import CompositeLike, resolve_composite
from .deployed import TWIN_OUTPUT
from .errors import InputError
from .inputs import read_feeds
from .load import PROTOBUF_LIMIT, ModelLike, serialized_size
from .targets import RegionTarget


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

    relevance: what one reads: for a model with one float input, shaped like it; for a token
    model, one value per token (N, T), summed over the hidden axis and over every embedding
    lookup (word, position, token type); None for several float inputs (see ``sources``).
    sources: {source name: relevance} for every relevance source: each float input (shaped
    like it) and each embedding table (per token, (N, T)). output: the model's output
    (logits). layers: {tensor: relevance}. target: the explained class per sample (at the last
    position for a sequence output; None when a mask was given). ``total`` is the relevance put
    on the output per sample, ``conservation`` the sum over every source / total per sample
    (1 for a conservative rule set, Montavon et al. 2019 eq. 2).
    """

    relevance: Optional[np.ndarray]
    output: np.ndarray
    layers: Dict[str, np.ndarray] = field(default_factory=dict)
    target: Optional[np.ndarray] = None
    total: Optional[np.ndarray] = None
    sources: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def conservation(self) -> np.ndarray:
        summed = sum(r.reshape(len(r), -1).sum(axis=1, dtype=np.float64) for r in self.sources.values())
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
    def inputs(self):
        """The model's inputs (``inputs.ModelInput``: name, element type, shape) in the order
        ``explain`` and the saved explainer take them."""
        return list(self.compiled.inputs)

    @property
    def sources(self):
        """The relevance sources (``inputs.Source``): each float input, each embedding lookup;
        their names key ``Explanation.sources``."""
        return list(self.compiled.sources)

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

    def _output_shape(self, feeds) -> Tuple[Optional[int], ...]:
        """The output's dims for these inputs: static ones, the batch size, and symbolic ones
        that an input shares (the sequence length); None where only the run tells."""
        sizes = {meta.shape[axis]: feeds[meta.name].shape[axis] for meta in self.compiled.inputs
                 for axis in range(1, len(meta.shape)) if isinstance(meta.shape[axis], str)}
        dims = self.compiled.output_shape
        n = len(next(iter(feeds.values())))
        return (n,) + tuple(d if isinstance(d, int) and d > 0 else sizes.get(d) for d in dims[1:])

    def _mask(self, target, shape) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The ``lrp_target_mask`` for ``target`` (see ``explain``) on an output of ``shape``,
        and the target class per sample when one was given."""
        n, sequence = shape[0], len(shape) == SEQUENCE_RANK
        if isinstance(target, RegionTarget):   # class k over a region of an (N, C, H, W) output (targets.py)
            return target.mask(shape), np.full(n, target.class_index, np.int64)
        if target is None:   # NaN: the explainer picks the class; a size only the run tells is broadcast from 1
            return np.full([1 if d is None else d for d in shape], np.nan, np.float32), None
        target = np.asarray(target)
        if target.ndim == 0 or target.shape == (n,):
            if target.dtype.kind not in "iu":
                raise InputError(f"target must be an int, one int per sample, or a mask; got dtype {target.dtype}")
            if None in shape:
                raise InputError(f"the model output's shape {shape} has sizes known only when it runs: pass "
                                 f"target=None (the predicted class) or a mask shaped like the output")
            classes = shape[-1] if sequence else int(np.prod(shape[1:]))
            target = np.broadcast_to(target, (n,)).astype(np.int64)
            if np.any(target < 0) or np.any(target >= classes):
                raise InputError(f"target {target.tolist()} is out of range: the model has {classes} outputs"
                                 + (" per position" if sequence else ""))
            mask = np.zeros((n, shape[1] if sequence else 1, classes), np.float32)
            mask[np.arange(n), -1, target] = 1.0   # a sequence output: the class at the last position
            return mask.reshape(shape), target
        if target.ndim != len(shape) or any(d is not None and d != g for d, g in zip(shape, target.shape)):
            expected = tuple("?" if d is None else d for d in shape)
            raise InputError(f"a target mask must have the output's shape {expected}, got {target.shape}")
        if not np.all(np.isfinite(target)):
            raise InputError("the target mask contains NaN or Inf values")
        return target.astype(np.float32), None

    def explain(self, x, target=None, layers: Sequence[str] = (), batch_size: Optional[int] = None) -> Explanation:
        """Explain a batch ``x``: one array (a one-input model) or a dict {input name: array}
        (every input of the model; token ids as integers). target: None (the predicted class;
        for a sequence output (N, T, V), the arg-max at the last position), an int, one int
        per sample (the class, at the last position for a sequence output), a mask shaped
        like the output (relevance at the output = output * mask), or a ``RegionTarget``
        (class k over a region of an (N, C, H, W) output, targets.py).
        layers: tensor names (see ``layer_names``) whose relevance to return too.
        batch_size: run at most this many samples at once (bounds onnxruntime's memory; each
        sample's explanation does not depend on the others)."""
        layers = tuple(dict.fromkeys(layers))
        check_layer_names(layers, self.compiled.layer_tensors)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
        feeds = read_feeds(self.compiled.inputs, x, self.compiled.sources)
        session, compiled = self._session(bool(layers))
        mask, resolved = self._mask(target, self._output_shape(feeds))
        sources = compiled.source_outputs   # source name -> output name
        wanted = [compiled.output_name] + ([compiled.relevance_output] if compiled.relevance_output else [])
        wanted = list(dict.fromkeys(wanted + list(sources.values()) + [compiled.layer_outputs[t] for t in layers]))
        if self._prepared.deployed is not None:   # the relevance starts on the twin's output (deployed.py)
            wanted.append(TWIN_OUTPUT)
        n = len(mask)
        step = batch_size or n
        chunks = [session.run(wanted, {**{k: v[i:i + step] for k, v in feeds.items()}, MASK_INPUT: mask[i:i + step]})
                  for i in range(0, n, step)]
        joined = chunks[0] if len(chunks) == 1 else [np.concatenate(parts) for parts in zip(*chunks)]
        results = dict(zip(wanted, joined))
        output = results[compiled.output_name]
        if target is None:
            resolved, mask = default_mask(output)
        explained = results.get(TWIN_OUTPUT, output)
        total = (explained.reshape(len(output), -1).astype(np.float64) * mask.reshape(len(output), -1)).sum(axis=1)
        return Explanation(results.get(compiled.relevance_output), output,
                           {t: results[compiled.layer_outputs[t]] for t in layers}, resolved, total,
                           {name: results[out] for name, out in sources.items()})

    def save(self, path, layers: Sequence[str] = (), external_data: bool = False) -> None:
        """Write the standalone explainer (inputs: the model's inputs and ``lrp_target_mask``;
        outputs: the model output, ``lrp_relevance`` (see ``Explanation.relevance``), with
        several sources ``lrp_relevance:<source>`` each, and ``lrp_relevance:<tensor>`` per layer).
        external_data: tensors in ``<name>.data`` beside it (for explainers above 2 GB)."""
        layers = tuple(dict.fromkeys(layers))
        compile_explainer(self._prepared, self.composite, self.maxpool, layers).save(path, external_data=external_data)
