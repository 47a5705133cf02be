"""The audit's store in OUT, resumable batch by batch.

    OUT/manifest.json             the settings (fingerprint of explainer, data and options)
    OUT/explainer.onnx            the explainer the engine ran
    OUT/relevance.zarr            zarr 3 group: relevance (N, *sample) and output (N, classes),
                                  one chunk per batch along N, Blosc/zstd-compressed
    OUT/batches/b<k>.parquet      batch k's rows: its commit record
    OUT/audit.parquet             the table of all rows with their SpRAy cluster (at the end)

A batch is committed when its Parquet part is moved into place, after its relevance and output
are written: a rerun skips committed batches and rewrites any other (its chunks are its own,
so a killed write touches nothing committed). Nothing is lost and nothing is done twice.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional, Set

import numpy as np

from ..errors import InputError
from ..files import write_atomically
from .engines import STATS
from .readers import Source

#: Columns of the audit table, in order (``cluster`` is added by the analysis).
COLUMNS = ("index", "id", "label", "prediction", "score", "target", "total", "conservation") + STATS + ("error",)


def values(table, name: str, missing=-1) -> np.ndarray:
    """A table column as numpy, nulls (samples not explained) as ``missing``."""
    return table.column(name).fill_null(missing).to_numpy()


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise InputError(f"the audit store needs {module}: pip install 'lrp_onnx[audit]'") from None


def write_json(path, data) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)

    write_atomically(path, write)


def write_bytes(path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomically(path, write)


def write_table(path, table) -> None:
    import pyarrow.parquet as pq

    write_atomically(path, lambda tmp: pq.write_table(table, tmp))


class Store:
    """Opens or creates the store for ``manifest`` (a JSON-able dict with ``n``, ``batch_size``,
    ``sample_shape``, ``classes``, ``float16`` and a ``fingerprint``). A store made with other
    settings is an InputError (nothing in it is touched)."""

    def __init__(self, out: str, manifest: Dict, explainer: bytes):
        zarr = _need("zarr")
        _need("pyarrow")
        manifest = json.loads(json.dumps(manifest))   # as it reads back (tuples become lists)
        self.out, self.manifest = out, manifest
        os.makedirs(os.path.join(out, "batches"), exist_ok=True)
        for folder in (out, os.path.join(out, "batches")):   # what a killed run was writing
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".partial"):
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        path = os.path.join(out, "manifest.json")
        if os.path.exists(path):
            with open(path) as fh:
                old = json.load(fh)
            if old != manifest:
                changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise InputError(f"{out} holds an audit with other settings ({', '.join(changed)} differ); "
                                 "give another --out or remove that folder")
            group = zarr.open_group(os.path.join(out, "relevance.zarr"), mode="r+")
        else:
            group = self._create(zarr)
            write_bytes(os.path.join(out, "explainer.onnx"), explainer)
            write_json(path, manifest)   # last: a store without its manifest is created anew
        self.relevance, self.output = group["relevance"], group["output"]

    def _create(self, zarr):
        m = self.manifest
        group = zarr.open_group(os.path.join(self.out, "relevance.zarr"), mode="w")
        codec = zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
        n, b = m["n"], m["batch_size"]
        group.create_array("relevance", shape=(n, *m["sample_shape"]), chunks=(b, *m["sample_shape"]),
                           dtype="float16" if m["float16"] else "float32", compressors=codec, fill_value=np.nan)
        group.create_array("output", shape=(n, m["classes"]), chunks=(b, m["classes"]), dtype="float32",
                           compressors=codec, fill_value=np.nan)
        return group

    def _part(self, batch: int) -> str:
        return os.path.join(self.out, "batches", f"b{batch:07d}.parquet")

    def committed(self) -> Set[int]:
        names = os.listdir(os.path.join(self.out, "batches"))
        return {int(n[1:-8]) for n in names if n.startswith("b") and n.endswith(".parquet")}

    def write(self, batch: int, result: Dict[str, np.ndarray], source: Source) -> None:
        """Write batch ``batch``'s relevance and output, then commit its rows."""
        import pyarrow as pa

        index = result["index"]
        start, stop = int(index[0]), int(index[-1]) + 1
        self.relevance[start:stop] = result["relevance"].astype(self.relevance.dtype)
        self.output[start:stop] = result["output"]
        failed = np.array([bool(e) for e in result["error"]])
        columns = {k: pa.array(result[k], mask=failed) for k in COLUMNS if k in result and k not in ("index", "error")}
        columns.update(index=pa.array(index), id=pa.array([source.ids[i] for i in index]),
                       label=pa.array(source.labels[index]), error=pa.array([str(e) for e in result["error"]]))
        write_table(self._part(batch), pa.table({k: columns[k] for k in COLUMNS}))   # null: not explained

    def table(self):
        """All committed rows, in sample order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = [pq.read_table(self._part(b)) for b in sorted(self.committed())]
        return pa.concat_tables(parts) if parts else None

    def finish(self, table) -> Optional[str]:
        """Write the audit table (with its cluster column) as OUT/audit.parquet."""
        path = os.path.join(self.out, "audit.parquet")
        write_table(path, table)
        return path
