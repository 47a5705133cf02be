"""Throughput of ``lrp-onnx audit``'s explanation stage: the local engine against Ray Data with 1
and 2 workers, side by side in one process, alternated round by round (the order rotates), the
median of ``--rounds`` rounds; and the largest difference of Ray's relevance from the local one.

Each round explains the whole DATA into a fresh store (read, explain, write Zarr + Parquet,
commit per batch: ``lrp_onnx.audit.explain``); Ray's time includes starting its actor pool
(one onnxruntime session per actor), not ``ray.init``, which runs once before. SpRAy and the
report are not timed. Default: models/digits_cnn.onnx on scikit-learn's 1797 digits, twice::

    python benchmarks/audit.py                      # about 2 minutes on 2 cores
    python benchmarks/audit.py --model m.onnx --data images/ --composite epsilon_plus --rounds 5
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def digits_npz(path, repeat: int) -> str:
    from exporters.digits import digits_28x28

    x, y = digits_28x28()
    np.savez(path, x=np.tile(x.reshape(-1, 1, 28, 28), (repeat, 1, 1, 1)), y=np.tile(y, repeat))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "digits_cnn.onnx"))
    parser.add_argument("--data", help="DATA (default: the digits, --repeat times)")
    parser.add_argument("--composite", default=None, help="default: epsilon_gamma_box with the [-1, 1] box (digits)")
    parser.add_argument("--preprocess", default="none")
    parser.add_argument("--repeat", type=int, default=2, help="digits: copies of the 1797 (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import ray

    from lrp_onnx import audit
    from lrp_onnx.audit.engines import ray_cluster

    composite = args.composite or {"preset": "epsilon_gamma_box", "low": -1, "high": 1}
    work = tempfile.mkdtemp(prefix="audit_bench.")
    try:
        data = args.data or digits_npz(os.path.join(work, "digits.npz"), args.repeat)
        contenders = [("local", "local", None), ("ray, 1 worker", "ray", 1), ("ray, 2 workers", "ray", 2)]
        ray_cluster()
        times = {name: [] for name, *_ in contenders}
        stores = {}
        for round_ in range(args.rounds):
            for name, engine, workers in contenders[round_ % 3:] + contenders[:round_ % 3]:
                out = os.path.join(work, f"{engine}{workers}_{round_}")
                start = time.perf_counter()
                store, source = audit.explain(args.model, data, out, composite, engine=engine, workers=workers,
                                              batch_size=args.batch_size, preprocess=args.preprocess, progress=False)
                times[name].append(time.perf_counter() - start)
                stores[name] = np.asarray(store.relevance[:], np.float64)
        n = len(source)
        reference = stores["local"]
        print(f"{os.path.basename(args.model)} on {n} samples, batch {args.batch_size}, {args.rounds} rounds, "
              f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), ray {ray.__version__}\n")
        print("| engine | images/s (median) | seconds (median) | max abs difference from local |")
        print("|---|---:|---:|---:|")
        for name, *_ in contenders:
            seconds = float(np.median(times[name]))
            diff = float(np.nanmax(np.abs(stores[name] - reference)))
            print(f"| {name} | {n / seconds:.0f} | {seconds:.2f} | {diff:.1e} |")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
