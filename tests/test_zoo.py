"""Every CNN classifier of the zoo (exporters.zoo.ZOO: 19 torchvision models, seeded random
weights with calibrated BatchNorm statistics, at their smallest exportable size) explains out
of the box: no op without a handler, both default composites compile, a batch of 2 gives
finite relevance, and the explainer's model output equals onnxruntime's forward of the
original model. benchmarks/zoo.py runs the same at 224x224 and prints the README's table."""
import numpy as np
import onnxruntime as ort
import pytest

import lrp_onnx
from lrp_onnx.coverage import op_coverage

torchvision = pytest.importorskip("torchvision", reason="the zoo needs the torch extra")
from exporters.zoo import ZOO  # noqa: E402

#: The explainer runs the canonicalized forward (BatchNorm folded into the convs), so its
#: logits differ from the original's by float32 rounding of reordered sums only.
OUTPUT_RTOL = 1e-4


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_explains(zoo_export, name):
    _, path = zoo_export(name)
    blocking = [row.op_type for row in op_coverage(path) if row.blocking]
    assert blocking == [], f"{name}: no relevance handler for {blocking}"

    size = ZOO[name]
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    scale = float(np.abs(forward).max())
    assert scale > 1e-3, f"{name}: the calibrated random network's logits vanish ({scale:.3g})"
    for composite in ("epsilon_gamma_box", "epsilon_plus_flat"):
        result = lrp_onnx.Explainer(path, composite).explain(x)
        assert result.relevance.shape == x.shape
        assert np.isfinite(result.relevance).all(), f"{name} {composite}: relevance is not finite"
        assert np.abs(result.relevance).max() > 0, f"{name} {composite}: relevance is all zero"
        assert np.abs(result.output - forward).max() <= OUTPUT_RTOL * scale
        print(f"\n  {name} {composite}: sum(R_in)/R_out = {np.round(result.conservation, 3)}")
