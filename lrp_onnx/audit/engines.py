"""Engines run the saved explainer (its ONNX bytes) over batches of a Source.

``BatchExplainer`` holds one onnxruntime session and explains batch b (samples
``b * batch_size`` onwards); the local engine calls it in a loop, the Ray engine inside a Ray
Data actor pool (one session per actor, GPU actors when a CUDA provider is asked for). Both
yield ``(batch, result)`` with the same arrays, since they run the same batches through the
same model; nothing here depends on how the explainer was built.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..compile import MASK_INPUT, RELEVANCE_OUTPUT
from ..errors import InputError
from ..explainer import create_session
from .readers import Source

TARGETS = ("pred", "label")
ENGINES = ("local", "ray")
#: Per-sample statistics of the relevance, columns of the audit table.
STATS = ("relevance_sum", "relevance_abs_sum", "relevance_min", "relevance_max", "positive_share")


def explainer_signature(explainer: bytes) -> Tuple[str, tuple, str, tuple]:
    """(input name, input shape, output name, output shape) of a saved explainer; None for a
    dynamic axis. An ONNX model that is not an explainer is an InputError."""
    model = onnx.load_from_string(explainer)
    inputs = {i.name: i for i in model.graph.input}
    outputs = [o.name for o in model.graph.output]
    if MASK_INPUT not in inputs or RELEVANCE_OUTPUT not in outputs:
        raise InputError(f"not an lrp_onnx explainer (needs input {MASK_INPUT!r} and output {RELEVANCE_OUTPUT!r})")

    def dims(info):
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)

    name = next(n for n in inputs if n != MASK_INPUT)
    output = next(o for o in model.graph.output if o.name != RELEVANCE_OUTPUT and not o.name.startswith(RELEVANCE_OUTPUT))
    return name, dims(inputs[name]), output.name, dims(output)


def batch_indices(batch: int, batch_size: int, n: int) -> np.ndarray:
    """The sample indices of batch ``batch``."""
    return np.arange(batch * batch_size, min((batch + 1) * batch_size, n))


class BatchExplainer:
    """Explains batch ``b`` of ``source`` with one onnxruntime session of the explainer bytes:
    the predicted class (target "pred") or the label where known ("label"). Returns arrays per
    sample: index, relevance, output, target, score, total (the relevance put on the output),
    conservation (sum R / total, Montavon et al. 2019 eq. 2), the STATS, and error ("" or
    why the sample was not explained: its relevance and output are NaN)."""

    def __init__(self, explainer: bytes, source: Source, batch_size: int, target: str = "pred",
                 providers: Optional[Sequence] = None):
        self.source, self.batch_size, self.target = source, batch_size, target
        self.input_name, input_shape, self.output_name, output_shape = explainer_signature(explainer)
        self.sample_shape, self.output_dims = input_shape[1:], output_shape[1:]
        self.classes = int(np.prod(self.output_dims))
        self.session = create_session(onnx.load_from_string(explainer), providers)

    def __call__(self, batch: int) -> Dict[str, np.ndarray]:
        index = batch_indices(batch, self.batch_size, len(self.source))
        x, errors = self.source.read_batch(index, self.sample_shape)
        ok = np.array([not e for e in errors], bool)
        n = len(index)
        relevance = np.full((n, *self.sample_shape), np.nan, np.float32)
        output = np.full((n, self.classes), np.nan, np.float32)
        if ok.any():
            mask = np.full((int(ok.sum()), self.classes), np.nan, np.float32)
            if self.target == "label":
                labels = self.source.labels[index[ok]]
                known = (labels >= 0) & (labels < self.classes)
                mask[known] = 0.0
                mask[np.flatnonzero(known), labels[known]] = 1.0
            out, rel = self.session.run([self.output_name, RELEVANCE_OUTPUT],
                                        {self.input_name: x[ok], MASK_INPUT: mask.reshape(-1, *self.output_dims)})
            output[ok], relevance[ok] = out.reshape(len(out), -1), rel
        flat = relevance.reshape(n, -1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            prediction = np.where(ok, np.nan_to_num(output, nan=-np.inf).argmax(1), -1)
            target = prediction.copy()
            if self.target == "label":
                labels = self.source.labels[index]
                use = ok & (labels >= 0) & (labels < self.classes)
                target[use] = labels[use]
            total = np.where(ok, output[np.arange(n), np.maximum(target, 0)], np.nan).astype(np.float64)
            summed = flat.sum(1)
            result = {
                "index": index.astype(np.int64), "relevance": relevance, "output": output,
                "prediction": prediction.astype(np.int64), "target": target.astype(np.int64),
                "score": np.where(ok, output[np.arange(n), np.maximum(prediction, 0)], np.nan).astype(np.float64),
                "total": total, "conservation": summed / total,
                "relevance_sum": summed, "relevance_abs_sum": np.abs(flat).sum(1),
                "relevance_min": flat.min(1), "relevance_max": flat.max(1),
                "positive_share": np.clip(flat, 0, None).sum(1) / np.abs(flat).sum(1),
                "error": np.array(errors, dtype=object),
            }
        return result


def local(worker: BatchExplainer, batches: Iterable[int]) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """The local engine: one session, the batches in order."""
    for batch in batches:
        yield batch, worker(batch)


class RayActor:
    """A Ray Data actor: one BatchExplainer (one onnxruntime session of the explainer bytes)
    per actor; each call explains the batches named in its rows."""

    def __init__(self, explainer, source, batch_size, target, providers):
        import ray

        if isinstance(explainer, ray.ObjectRef):
            explainer = ray.get(explainer)
        self.worker = BatchExplainer(explainer, source, batch_size, target, providers)

    def __call__(self, rows: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        parts = [self.worker(int(b)) for b in rows["batch"]]
        out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        out["batch"] = np.concatenate([np.full(len(p["index"]), b, np.int64) for p, b in zip(parts, rows["batch"])])
        return out


def ray_cluster(address: Optional[str] = None) -> bool:
    """Connect to Ray: the cluster at ``address``, or a local one with this machine's CPUs (no
    dashboard). Returns whether this call started it (the caller then shuts it down)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--engine ray needs Ray Data: pip install 'lrp_onnx[audit]'") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False   # the audit's own bar counts samples
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=os.cpu_count(), **quiet)
    return True


def on_ray(explainer: bytes, source: Source, batch_size: int, batches: Sequence[int], target: str = "pred",
           providers: Optional[Sequence] = None, workers: Optional[int] = None,
           ) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """The Ray engine: ``map_batches`` over one row per batch with an actor pool of ``workers``
    actors (default: the cluster's CPUs, or GPUs when a CUDA provider is asked for); yields each
    batch once all its samples are back. Ray must be initialized (``ray_cluster``)."""
    import ray

    if not batches:
        return
    names = [p if isinstance(p, str) else p[0] for p in providers or ()]
    gpu = "CUDAExecutionProvider" in names
    resources = ray.cluster_resources()
    if workers is None:
        workers = max(1, int(resources.get("GPU" if gpu else "CPU", 1)))
    per_actor = {"num_gpus": 1} if gpu else {"num_cpus": resources.get("CPU", 1) / workers}   # the CPUs shared out
    ds = ray.data.from_items([{"batch": b} for b in batches], override_num_blocks=len(batches))
    ds = ds.map_batches(RayActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                        fn_constructor_args=(ray.put(explainer), source, batch_size, target, providers), **per_actor)
    expected = {b: len(batch_indices(b, batch_size, len(source))) for b in batches}
    pending: Dict[int, list] = {}
    for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for b in np.unique(block["batch"]):
            rows = block["batch"] == b
            pending.setdefault(int(b), []).append({k: v[rows] for k, v in block.items() if k != "batch"})
            if sum(len(p["index"]) for p in pending[int(b)]) == expected[int(b)]:
                parts = pending.pop(int(b))
                merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                order = np.argsort(merged["index"], kind="stable")
                yield int(b), {k: v[order] for k, v in merged.items()}
