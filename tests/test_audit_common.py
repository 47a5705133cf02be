"""Helpers of the audit tests (no tests here): the shipped digits CNN, small digit sets written
as an .npz, an image folder and Parquet, and the command line in a subprocess."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The shipped digits CNN: input (N, 1, 28, 28) in [-1, 1], logits (N, 10).
DIGITS_CNN = os.path.join(ROOT, "models", "digits_cnn.onnx")
#: Its composite: z^B with the [-1, 1] box at the input.
COMPOSITE = {"preset": "epsilon_gamma_box", "low": -1, "high": 1}


def need_audit_extra():
    for module in ("zarr", "pyarrow", "tqdm", "sklearn", "h5py", "yaml"):
        pytest.importorskip(module, reason=f"the audit needs {module} (pip install 'lrp_onnx[audit]')")


def digits(n, seed=0):
    """n of scikit-learn's digits (seeded choice) as (n, 1, 28, 28) float32 in [-1, 1] and labels."""
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    from exporters.digits import digits_28x28

    x, y = digits_28x28()
    rows = np.random.default_rng(seed).choice(len(x), n, replace=False)
    return x[rows].reshape(-1, 1, 28, 28), y[rows]


def composite_file(folder):
    path = os.path.join(folder, "composite.json")
    with open(path, "w") as fh:
        json.dump(COMPOSITE, fh)
    return path


def png_bytes(digit):
    """A digit in [-1, 1] as 8-bit gray PNG bytes (0 = -1)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round((digit.reshape(28, 28) + 1) * 127.5).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def image_folder(root, x, y):
    """An ImageFolder of the digits: root/<label>/<i>.png; returns the ids in ImageFolder order."""
    for i, (digit, label) in enumerate(zip(x, y)):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        with open(os.path.join(root, str(label), f"{i:03d}.png"), "wb") as fh:
            fh.write(png_bytes(digit))
    return sorted(f"{label}/{i:03d}.png" for i, label in enumerate(y))


def cli(*args, timeout=600):
    """``lrp-onnx ARGS`` in a fresh interpreter."""
    code = "import sys; from lrp_onnx.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
