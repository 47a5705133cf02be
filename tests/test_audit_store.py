"""lrp_onnx.audit.store: Zarr chunks per batch, Parquet parts as commit records; an audit
killed (SIGKILL) halfway and rerun gives the store of an uninterrupted run, nothing missing,
nothing done twice; a store of other settings is refused."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lrp_onnx import audit
from lrp_onnx.errors import InputError
from test_audit_common import COMPOSITE, DIGITS_CNN, ROOT, composite_file, digits, need_audit_extra

N, BATCH = 300, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    need_audit_extra()
    folder = tmp_path_factory.mktemp("store")
    x, y = digits(N)
    np.savez(folder / "d.npz", x=x, y=y)
    return folder


def read_store(out):
    import pyarrow.parquet as pq
    import zarr

    group = zarr.open_group(os.path.join(out, "relevance.zarr"), mode="r")
    return group["relevance"][:], group["output"][:], pq.read_table(os.path.join(out, "audit.parquet"))


def parts(out):
    folder = os.path.join(out, "batches")
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder) if name.endswith(".parquet")}


def test_killed_audit_resumes_to_the_uninterrupted_store(data, tmp_path):
    reference = audit.run(DIGITS_CNN, data / "d.npz", tmp_path / "whole", COMPOSITE, batch_size=BATCH,
                          report=False, virelay=False, progress=False)
    out = tmp_path / "killed"
    args = ["audit", DIGITS_CNN, data / "d.npz", "--out", out, "--composite", composite_file(tmp_path),
            "--batch-size", BATCH, "--no-progress"]
    code = "import sys; from lrp_onnx.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(parts(out) if os.path.isdir(out / "batches") else ()) < 15:
            assert process.poll() is None, "the audit ended before it could be killed"
            assert time.monotonic() < deadline, "no batch was committed within 120 s"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = parts(out)
    assert 15 <= len(before) < N // BATCH and not (out / "audit.parquet").exists()
    result = audit.run(DIGITS_CNN, data / "d.npz", out, COMPOSITE, batch_size=BATCH, report=False, virelay=False,
                       progress=False)
    after = parts(out)
    assert len(after) == N // BATCH
    assert {name: after[name] for name in before} == before   # committed batches were not redone
    relevance, output, table = read_store(out)
    want_relevance, want_output, want_table = read_store(tmp_path / "whole")
    np.testing.assert_array_equal(relevance, want_relevance)
    np.testing.assert_array_equal(output, want_output)
    assert table.equals(want_table) and table.column("index").to_pylist() == list(range(N))
    assert result.table.equals(reference.table)
    assert not [name for name in os.listdir(out / "batches") if name.endswith(".partial")]


def test_layout_float16_and_chunks(data, tmp_path):
    import zarr

    audit.run(DIGITS_CNN, data / "d.npz", tmp_path / "a", COMPOSITE, batch_size=64, float16=True,
              report=False, virelay=False, progress=False)
    relevance = zarr.open_group(tmp_path / "a" / "relevance.zarr", mode="r")["relevance"]
    assert relevance.dtype == np.float16 and relevance.shape == (N, 1, 28, 28) and relevance.chunks == (64, 1, 28, 28)
    assert sorted(os.listdir(tmp_path / "a" / "batches")) == [f"b{b:07d}.parquet" for b in range(-(-N // 64))]


def test_store_of_other_settings_is_refused_untouched(data, tmp_path):
    audit.run(DIGITS_CNN, data / "d.npz", tmp_path / "a", COMPOSITE, batch_size=100, report=False, virelay=False,
              progress=False)
    before = parts(tmp_path / "a")
    with pytest.raises(InputError, match="holds an audit with other settings .*batch_size.*give another --out"):
        audit.run(DIGITS_CNN, data / "d.npz", tmp_path / "a", COMPOSITE, batch_size=50, progress=False)
    with pytest.raises(InputError, match="composite"):
        audit.run(DIGITS_CNN, data / "d.npz", tmp_path / "a", "epsilon_plus", batch_size=100, progress=False)
    assert parts(tmp_path / "a") == before
