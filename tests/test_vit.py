"""End to end: a small torchvision VisionTransformer (image 32, patch 8, 2 layers, 2 heads,
hidden 32, MLP 64, 10 classes; seeded random weights, the zero-initialised head re-drawn so that
the logits are not all 0), exported with exporters.pytorch.export_module (TorchScript, opset 17:
packed Q/K/V picked by Gather, MatMul of Q K^T and A V, Softmax, LayerNormalization, erf GELU,
the class token expanded and picked by Gather) compiles with attnlrp, cp_lrp and vit_gamma:
finite relevance, the explainer's logits equal onnxruntime's forward of the model, and the
conservation ratio sum R_in / R_out is reported (printed: these are random weights, so it shows
what the biases and the softmax absorb, not a trained network's).

Without biases, CP-LRP with LRP-0 conserves: sum R_in = R_out to 1e-4 (measured 1.2e-5).

The gradient composite is checked against torch.autograd on the same weights: it exercises the
VJPs of every op of the transformer (MatMul of two activations, Softmax, LayerNorm, Gather,
Expand, Concat, GELU). Tolerance: float32 graph against float32 autograd, 1e-3 of max|grad|
(two float32 gradient computations through ~40 ops, differing in summation order).
"""
from __future__ import annotations

import numpy as np
import pytest

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx.rules import LRP0, AttnSoftmax, CPConstant, Uniform

torch = pytest.importorskip("torch")
vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")


def export_vit(directory, without_biases=False):
    """(module, path); ``without_biases``: every bias, the class token and the position
    embedding zero (nothing constant enters the sums)."""
    from exporters.pytorch import export_module

    torch.manual_seed(0)
    module = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                  mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(module.heads.head.weight, std=0.2)
    if without_biases:
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if name.endswith("bias") or name in ("class_token", "encoder.pos_embedding"):
                    parameter.zero_()
    path = directory / "vit.onnx"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)   # the fused attention kernel has no ONNX export
    try:
        export_module(module, torch.randn(2, 3, 32, 32), path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return module, str(path)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return export_vit(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp", "vit_gamma"])
def test_vit_compiles_and_explains(vit, images, composite):
    module, path = vit
    ex = lrp_onnx.Explainer(path, composite)
    kinds = {type(rule).__name__ for rule in ex.rules.values()}
    assert kinds >= ({"AttnSoftmax", "Uniform"} if composite == "attnlrp" else {"CPConstant"})
    res = ex.explain(images)
    with torch.no_grad():
        logits = module(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(res.output, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    assert np.all(np.isfinite(res.relevance)) and np.abs(res.relevance).max() > 0
    assert np.all(np.isfinite(res.conservation))
    print(f"vit {composite}: sum R_in / R_out = {np.round(res.conservation, 3)}")


def test_vit_gradient_matches_autograd(vit, images):
    module, path = vit
    res = lrp_onnx.Explainer(path, "gradient").explain(images, target=3)
    x = torch.from_numpy(images).requires_grad_()
    module(x)[:, 3].sum().backward()
    expected = x.grad.numpy()
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_bias_free_vit_conserves_under_cp_lrp(tmp_path, images):
    """Without biases (class token and position embedding zero too), CP-LRP with LRP-0 is
    conservative end to end: the softmax is a constant, every other op linear in the relevance
    path or a proportional split, LayerNorm's bias-free linear map conserves. AttnLRP's softmax
    rule absorbs its Taylor bias, so the same model under the uniform rule does not (printed)."""
    _, path = export_vit(tmp_path, without_biases=True)
    cp = Composite(((Family("all", "norm"), LRP0()), (Family("bilinear", "softmax"), CPConstant(0.0))))
    res = lrp_onnx.Explainer(path, cp).explain(images)
    np.testing.assert_allclose(res.conservation, 1.0, rtol=1e-4)   # float32 sums over ~40 ops: ~1e-5 measured
    attn = Composite(((Family("all", "norm"), LRP0()), (Family("bilinear"), Uniform(0.0)), (Family("softmax"), AttnSoftmax())))
    print(f"bias-free vit, AttnLRP with LRP-0: sum R_in / R_out = {np.round(lrp_onnx.Explainer(path, attn).explain(images).conservation, 3)}")
