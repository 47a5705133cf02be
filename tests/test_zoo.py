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

torch = pytest.importorskip("torch", reason="the zoo needs the torch extra")
torchvision = pytest.importorskip("torchvision", reason="the zoo needs the torch extra")
from exporters.zoo import ZOO  # noqa: E402
from tolerances import module_depth, torch_float64, within_envelope  # noqa: E402

#: The explainer runs the canonicalized forward (BatchNorm folded into the convs), so its
#: logits differ from the original's by float32 rounding of reordered sums only; how much
#: depends on the network (100 layers amplify it: 1e-4 of the scale on Inception-v3), so the
#: tolerance is measured (tests/tolerances.py): both onnxruntime forwards (the original export
#: and the explainer's) against the module in float64, within K = 4 times torch's own float32
#: error on the same input plus a roundoff floor. Observed error / tolerance on an AMD EPYC
#: (2 cores, AVX2; pytest -s tests/test_zoo.py): inception_v3 0.11/0.11 (export/explainer;
#: torch's own float32 error 1.1e-4 of the scale, onnxruntime's 4.8e-5), resnet50 0.13/0.15,
#: vgg16_bn 0.09/0.09; at most 0.34 over the zoo (mnasnet0_5's export).


def _references(module, x):
    """(torch's float32 output, the float64 deep copy's output) on ``x``."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return module(xt).numpy(), torch_float64(module, xt)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_explains(zoo_export, name):
    module, path = zoo_export(name)
    blocking = [row.op_type for row in op_coverage(path) if row.blocking]
    assert blocking == [], f"{name}: no relevance handler for {blocking}"

    size = ZOO[name]
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    scale = float(np.abs(forward).max())
    assert scale > 1e-3, f"{name}: the calibrated random network's logits vanish ({scale:.3g})"
    ref32, ref64 = _references(module, x)
    depth = module_depth(module)
    assert within_envelope(forward, ref32, ref64, depth, f"{name} export") <= 1
    for composite in ("epsilon_gamma_box", "epsilon_plus_flat"):
        result = lrp_onnx.Explainer(path, composite).explain(x)
        assert result.relevance.shape == x.shape
        assert np.isfinite(result.relevance).all(), f"{name} {composite}: relevance is not finite"
        assert np.abs(result.relevance).max() > 0, f"{name} {composite}: relevance is all zero"
        assert within_envelope(result.output, ref32, ref64, depth, f"{name} {composite} output") <= 1
        print(f"\n  {name} {composite}: sum(R_in)/R_out = {np.round(result.conservation, 3)}")


@pytest.mark.parametrize("name", ["inception_v3", "resnet50"])
def test_zoo_tolerance_rejects_a_wrong_bias(zoo_export, name):
    """The measured tolerance is not lax: the float64 reference with the classifier's bias
    omitted (torchvision's init: |b| <= 1/sqrt(fan-in), ~1e-3 of the logits' scale here) is
    rejected; the envelope is measured on the wrong function itself, in float32 and float64
    (observed error / tolerance on an AMD EPYC: inception_v3 2.9, resnet50 42)."""
    import copy

    module, path = zoo_export(name)
    size = ZOO[name]
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    wrong = copy.deepcopy(module)
    torch.nn.init.zeros_(wrong.fc.bias)
    # the envelope is the wrong function's own float32 error (K * |ref32 - wrong64| would
    # contain the very difference under test)
    wrong32, wrong64 = _references(wrong, x)
    assert within_envelope(forward, wrong32, wrong64, module_depth(module), f"{name} without fc.bias") > 1
