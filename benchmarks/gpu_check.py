"""VGG-16 (torchvision, seeded random weights) explained on CUDAExecutionProvider and on CPU:
the relevance must agree. Needs onnxruntime-gpu and a CUDA device; without them it exits with
code 2 and says what is missing (never a silent CPU fallback: ``Explainer`` refuses a provider
that does not start).

Tolerance: per image, max|cuda - cpu| <= RTOL * max|cpu| for all but OUTLIER_FRACTION of the
elements, and relative L2 <= RTOL_L2. The two differ by float32 summation order and cuDNN's
convolution algorithms (TF32 is switched off: ``use_tf32=0``, full float32); winner-take-all
MaxPool can move a window's relevance where two inputs tie to ~1e-7 (tests/test_zennit.py
explains the same effect between float32 and float64), hence the outlier allowance.

    python benchmarks/gpu_check.py [--composite epsilon_gamma_box] [--batch 4] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench import export, images  # noqa: E402

RTOL = 1e-4
RTOL_L2 = 1e-4
OUTLIER_FRACTION = 1e-3
CUDA = "CUDAExecutionProvider"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--composite", default="epsilon_gamma_box")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lrp_onnx_bench"))
    args = parser.parse_args(argv)

    import onnxruntime as ort

    import lrp_onnx
    from lrp_onnx.errors import InputError

    if CUDA not in ort.get_available_providers():
        print(f"gpu_check: {CUDA} is not available in this onnxruntime ({ort.__version__}, providers "
              f"{ort.get_available_providers()}); install onnxruntime-gpu on a machine with CUDA", file=sys.stderr)
        return 2
    os.makedirs(args.cache, exist_ok=True)
    path = export("vgg16", args.cache)
    x = images(args.batch)
    try:
        gpu = lrp_onnx.Explainer(path, composite=args.composite, providers=[(CUDA, {"use_tf32": "0"})])
    except InputError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    cpu = lrp_onnx.Explainer(path, composite=args.composite, providers=["CPUExecutionProvider"])

    times = {"cuda": [], "cpu": []}
    results = {}
    for _ in range(args.repeats + 1):   # the first round warms up
        for name, explainer in (("cuda", gpu), ("cpu", cpu)):
            start = time.perf_counter()
            results[name] = explainer.explain(x)
            times[name].append(time.perf_counter() - start)
    got, ref = results["cuda"], results["cpu"]
    ok = np.array_equal(got.target, ref.target)
    print(f"VGG-16, {args.composite}, batch {args.batch}: median explain cuda {np.median(times['cuda'][1:]):.4f} s, "
          f"cpu {np.median(times['cpu'][1:]):.4f} s; targets equal: {ok}")
    for i in range(args.batch):
        diff = np.abs(got.relevance[i].astype(np.float64) - ref.relevance[i])
        scale = float(np.abs(ref.relevance[i]).max())
        outliers = int((diff > RTOL * scale).sum())
        l2 = float(np.linalg.norm(diff) / np.linalg.norm(ref.relevance[i]))
        passed = outliers <= OUTLIER_FRACTION * diff.size and l2 <= RTOL_L2
        ok &= passed
        print(f"  image {i}: max|diff|/max|cpu| = {diff.max() / scale:.3g}, relative L2 = {l2:.3g}, "
              f"{outliers} of {diff.size} elements above {RTOL:g}: {'ok' if passed else 'FAIL'}")
    print("gpu_check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
