"""Export a torch.nn.Module to ONNX with a dynamic batch axis, and check it against torch."""
from __future__ import annotations

import os
import warnings

import numpy as np

OPSET = 17


def export_module(module, example, path, opset: int = OPSET, input_name: str = "input",
                  output_name: str = "logits", rtol: float = 1e-4) -> str:
    """Export ``module`` (put in eval mode) at ``path`` with the TorchScript exporter (it needs
    no extra package and names nodes after the torch modules), batch axis dynamic; then run the
    file in onnxruntime on ``example`` and require |ort - torch| <= rtol * max|torch| (float32
    kernels differ in summation order)."""
    import onnxruntime as ort
    import torch

    module = module.eval()
    path = os.fspath(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), path, dynamo=False, opset_version=opset,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}},
        )
        expected = module(example).numpy()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {input_name: example.numpy()})[0]
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.abs(got - expected).max())
    if error > rtol * scale:
        os.remove(path)
        raise RuntimeError(f"onnxruntime differs from torch by {error:.3g} (scale {scale:.3g}) after export")
    return path
