"""Deployment-side auditing: explain a whole dataset with the saved explainer, find the model's
strategies by Spectral Relevance Analysis (SpRAy, Lapuschkin et al. 2019, Nat. Commun.), write
a report and a ViRelAy project.

    from lrp_onnx import audit
    result = audit.run("model.onnx", "images/", "audit_out", engine="local")   # or engine="ray"
    result.table          # pyarrow.Table: one row per sample, its cluster
    result.classes        # per explained class: mean heatmap, SpRAy (eigenvalues, clusters)

Stages: ``readers`` (DATA), ``engines`` (local, Ray Data), ``store`` (Zarr + Parquet,
resumable), ``analysis`` (SpRAy), ``report`` (HTML), ``virelay`` (ViRelAy project). Needs the
``audit`` extra (zarr, pyarrow, tqdm, scikit-learn, h5py, pyyaml; ray for engine="ray").
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..compile import MASK_INPUT, compile_explainer
from ..composites import CompositeLike, resolve_composite
from ..errors import InputError
from ..images import Preprocess, preprocess_from
from .engines import (ENGINES, TARGETS, BatchExplainer, batch_indices, explainer_signature, local, on_ray,
                      ray_cluster)
from .readers import Source, open_source

__all__ = ["run", "explain", "finish", "Audit", "open_source"]


@dataclass
class Audit:
    """What ``run`` made: the folder, the table (pyarrow), the per-class analyses, the source,
    the store and the paths of the files written."""

    out: str
    table: object
    classes: List
    source: Source
    store: object
    paths: Dict[str, str] = field(default_factory=dict)


def explainer_bytes(model, composite: CompositeLike = "epsilon_gamma_box", maxpool: Optional[str] = None) -> bytes:
    """The saved explainer of ``model`` (a path or ModelProto): the model itself when it already
    is one (it has the ``lrp_target_mask`` input), else compiled with ``composite``."""
    data = _model_bytes(model)
    if data is not None:
        try:
            if any(i.name == MASK_INPUT for i in onnx.load_from_string(data).graph.input):
                return data
        except Exception:   # not ONNX: compile_explainer names the problem
            pass
    return compile_explainer(model, composite, maxpool).model.SerializeToString()


def _model_bytes(model) -> Optional[bytes]:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        with open(model, "rb") as fh:
            return fh.read()
    return None


def _explainer(out, model, composite, maxpool) -> Tuple[bytes, Dict]:
    """(explainer bytes, the manifest entries that say where it came from). A rerun of the
    same model and composite reuses OUT/explainer.onnx, the explainer that the committed
    batches ran (not one compiled again by another lrp_onnx version)."""
    data = _model_bytes(model)
    origin = {"model_sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
              "composite": repr(resolve_composite(composite)), "maxpool": maxpool}
    manifest, saved = os.path.join(out, "manifest.json"), os.path.join(out, "explainer.onnx")
    if data is not None and os.path.isfile(manifest) and os.path.isfile(saved):
        with open(manifest) as fh:
            old = json.load(fh)
        if all(old.get(k) == v for k, v in origin.items()):
            with open(saved, "rb") as fh:
                return fh.read(), origin
    return explainer_bytes(model, composite, maxpool), origin


def _progress(total: int, done: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise InputError("the audit's progress bar needs tqdm: pip install 'lrp_onnx[audit]'") from None
    return tqdm(total=total, initial=done, unit="img", desc="explaining", disable=not enabled, dynamic_ncols=True)


def run(model, data, out, composite: CompositeLike = "epsilon_gamma_box", maxpool: Optional[str] = None,
        engine: str = "local", address: Optional[str] = None, workers: Optional[int] = None, batch_size: int = 64,
        preprocess="none", target: str = "pred", float16: bool = False, providers: Optional[Sequence] = None,
        image_column: Optional[str] = None, label_column: Optional[str] = None, max_clusters: int = 8,
        neighbors: int = 10, report: bool = True, virelay: bool = True, progress: bool = True) -> Audit:
    """Audit ``model`` (an ONNX model, or a saved explainer) on DATA (an image folder, an .npz
    or a Parquet file) into the folder ``out``: relevance of every sample (the ``target``:
    "pred" or "label") in batches of ``batch_size`` on the ``engine`` ("local" or "ray" at
    ``address``, default a local cluster, with ``workers`` actors), SpRAy per explained class,
    then OUT/audit.parquet, OUT/report.html and OUT/virelay/project.yaml. A rerun into the
    same ``out`` resumes: committed batches are kept, the rest explained."""
    store, source = explain(model, data, out, composite, maxpool, engine, address, workers, batch_size, preprocess,
                            target, float16, providers, image_column, label_column, progress)
    return finish(store, source, model_name=os.path.basename(os.fspath(model)) if isinstance(model, (str, os.PathLike))
                  else "model", data_name=os.fspath(data), composite=composite, report=report, virelay=virelay,
                  max_clusters=max_clusters, neighbors=neighbors)


def explain(model, data, out, composite: CompositeLike = "epsilon_gamma_box", maxpool: Optional[str] = None,
            engine: str = "local", address: Optional[str] = None, workers: Optional[int] = None, batch_size: int = 64,
            preprocess="none", target: str = "pred", float16: bool = False, providers: Optional[Sequence] = None,
            image_column: Optional[str] = None, label_column: Optional[str] = None, progress: bool = True):
    """The first half of ``run``: every batch explained and committed into the store in
    ``out`` (resuming what is there). Returns (store, source)."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; use {' or '.join(TARGETS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be a positive int, got {batch_size!r}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if (address or workers is not None) and engine != "ray":
        raise InputError("--address and --workers are for --engine ray")
    spec = preprocess if isinstance(preprocess, Preprocess) else preprocess_from(preprocess)
    explainer, origin = _explainer(out, model, composite, maxpool)
    _, input_shape, _, output_shape = explainer_signature(explainer)
    if any(not isinstance(d, int) or d <= 0 for d in input_shape[1:] + output_shape[1:]):
        raise InputError(f"the model's input {input_shape} or output {output_shape} has dynamic sizes after the batch "
                         "axis; an audit needs fixed ones")
    source = open_source(data, input_shape, spec, image_column, label_column)
    # the local session is built (and its providers checked) before anything is written
    worker = BatchExplainer(explainer, source, batch_size, target, providers) if engine == "local" else None
    manifest = {
        **origin, "format": 1, "explainer_sha256": hashlib.sha256(explainer).hexdigest(), "data": source.fingerprint(),
        "n": len(source), "batch_size": int(batch_size), "sample_shape": list(input_shape[1:]),
        "classes": int(np.prod(output_shape[1:])), "float16": bool(float16), "target": target, "preprocess": asdict(spec),
    }
    from .store import Store

    os.makedirs(out, exist_ok=True)
    store = Store(os.fspath(out), manifest, explainer)
    batches = range(-(-len(source) // batch_size))
    done = store.committed()
    todo = [b for b in batches if b not in done]
    with _progress(len(source), sum(len(batch_indices(b, batch_size, len(source))) for b in done), progress) as bar:
        if engine == "local":
            results = local(worker, todo)
        else:
            started = ray_cluster(address)
            results = on_ray(explainer, source, batch_size, todo, target, providers, workers)
        try:
            for batch, result in results:
                store.write(batch, result, source)
                bar.update(len(result["index"]))
        finally:
            if engine == "ray" and started:
                import ray

                ray.shutdown()
    return store, source


def class_names(source: Source, classes: int) -> List[str]:
    """The source's class names when they cover the model's outputs, else the output indices."""
    return list(source.classes) if len(source.classes) == classes else [str(i) for i in range(classes)]


def finish(store, source: Source, model_name: str, data_name: str, composite, report: bool = True,
           virelay: bool = True, max_clusters: int = 8, neighbors: int = 10) -> Audit:
    """SpRAy on a complete store, then the table with its clusters, the report and the
    ViRelAy project."""
    import pyarrow as pa

    from .analysis import analyse

    table = store.table()
    classes, cluster = analyse(table, store.relevance, source.layout, source.size, max_clusters, neighbors)
    table = table.append_column("cluster", pa.array(cluster, pa.int64()))
    paths = {"table": store.finish(table), "relevance": os.path.join(store.out, "relevance.zarr")}
    names = class_names(source, store.manifest["classes"])
    title = f"{model_name} on {data_name}"
    if report:
        from .report import write_report

        paths["report"] = write_report(os.path.join(store.out, "report.html"), title, table, classes, source,
                                       store.relevance, names, composite)
    if virelay:
        from .virelay import export_virelay

        paths["virelay"] = export_virelay(os.path.join(store.out, "virelay"), model_name, table, classes, source,
                                          store.relevance, store.output, names, composite, store.manifest["target"])
    return Audit(store.out, table, classes, source, store, paths)
