"""The audit as a ViRelAy project (Anders et al. 2021, "Software for dataset-wide XAI: from
local explanations to global insights with Zennit, CoRelAy, and ViRelAy"), in the format that
ViRelAy's ``virelay.model.Project`` reads:

    project.yaml      name, model, label map, dataset, attributions, analyses
    label-map.json    [{index, word_net_id, name}]
    dataset.h5        data (M, H, W, 3) uint8 and label (M,): the explained samples
    attribution.h5    attribution (M, H, W, 1), prediction (M, classes), label (M,)
    analysis.h5       per explained class: index, cluster/<name>, embedding/<name> (+ eigenvalue)

Only samples explained without error are exported, renumbered 0..M-1 in sample order (the
table's ``index`` of each is in ``dataset.h5``'s ``index``). A sample without a label gets its
explained class as label (ViRelAy needs one). Open it with ``virelay OUT/virelay/project.yaml``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import List

import numpy as np

from ..errors import InputError
from .analysis import ClassAnalysis, heatmaps
from .store import values


def _modules():
    try:
        import h5py
        import yaml
    except ImportError:
        raise InputError("the ViRelAy export needs h5py and pyyaml: pip install 'lrp_onnx[audit]'") from None
    return h5py, yaml


def export_virelay(folder, model_name: str, table, classes: List[ClassAnalysis], source, relevance, output,
                   names: List[str], composite, target: str) -> str:
    """Write the project into ``folder`` (built beside it, then moved into place) and return the
    path of its project.yaml."""
    h5py, yaml = _modules()
    ok = np.flatnonzero([not e for e in table.column("error").to_pylist()])
    renumber = np.full(len(table), -1, np.int64)
    renumber[ok] = np.arange(len(ok))
    label = values(table, "label")[ok]
    label = np.where(label >= 0, label, values(table, "target")[ok])
    given, folder = os.fspath(folder), os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    tmp = tempfile.mkdtemp(prefix=".virelay.", suffix=".partial", dir=parent)
    try:
        images = np.stack([np.clip(np.asarray(source.display(int(i))) * 255 + 0.5, 0, 255).astype(np.uint8) for i in ok])
        with h5py.File(os.path.join(tmp, "dataset.h5"), "w") as fh:
            fh.create_dataset("data", data=images, compression="gzip")
            fh.create_dataset("label", data=label)
            fh.create_dataset("index", data=ok)
        maps = heatmaps(relevance, ok, source.layout, source.size)
        with h5py.File(os.path.join(tmp, "attribution.h5"), "w") as fh:
            fh.create_dataset("attribution", data=maps[..., None], compression="gzip")
            fh.create_dataset("prediction", data=np.asarray(output.oindex[ok] if hasattr(output, "oindex") else output[ok]))
            fh.create_dataset("label", data=label)
        with h5py.File(os.path.join(tmp, "analysis.h5"), "w") as fh:
            for c in classes:
                if c.spray is None:
                    continue
                group = fh.create_group(names[c.target].replace("/", "_"))
                group.create_dataset("index", data=renumber[c.rows])
                clusters = group.create_group("cluster")
                for k, labels in c.spray.clusterings.items():
                    clusters.create_dataset(f"kmeans-{k:02d}", data=labels)
                clusters.create_dataset("eigengap", data=c.spray.clusters)
                embedding = group.create_group("embedding")
                spectral = embedding.create_dataset("spectral", data=c.spray.embedding)
                spectral.attrs["eigenvalue"] = c.spray.eigenvalues
                embedding.create_dataset("spectral-2d", data=c.spray.coords)
        with open(os.path.join(tmp, "label-map.json"), "w") as fh:
            json.dump([{"index": i, "word_net_id": n.replace("/", "_"), "name": n} for i, n in enumerate(names)], fh, indent=1)
        project = {"project": {
            "name": f"LRP audit of {model_name}", "model": model_name, "label_map": "label-map.json",
            "dataset": {"name": f"{source.kind} ({len(ok)} samples)", "type": "hdf5", "path": "dataset.h5"},
            "attributions": {"attribution_method": f"lrp ({composite})",
                             "attribution_strategy": "true_label" if target == "label" else "predicted_label",
                             "sources": ["attribution.h5"]},
            "analyses": [{"analysis_method": "spectral_analysis", "sources": ["analysis.h5"]}],
        }}
        with open(os.path.join(tmp, "project.yaml"), "w") as fh:
            yaml.safe_dump(project, fh, sort_keys=False)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.chmod(tmp, 0o755)   # mkdtemp makes it private
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(given, "project.yaml")
