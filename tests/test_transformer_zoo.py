"""The transformer zoo (README "The transformer zoo"; benchmarks/transformer_zoo.py prints its
table at full size): torchvision's ViT and Swin and timm's DeiT-tiny and ViT-small (each as a
small variant of the same architecture at 32x32, exporters.zoo.VISION_TRANSFORMERS; the real
vit_b_16 at 224x224 in a slow test), and a flax.nnx transformer block exported by jax2onnx
with native and with decomposed LayerNorm. Seeded random weights; each compiles with attnlrp
and cp_lrp (and vit_gamma for the vision models) and explains a batch of 2:

- the relevance is finite and not all zero;
- the explainer's output and onnxruntime's forward of the export are within the float32
  envelope of the framework's float64 output (exporters/check.py: measured, not a fixed 1e-4);
- the relevance put on the output is the target logit: at the head Gemm's input (Epsilon rule)
  it sums to (z_t - b_t) z_t / (z_t + eps sgn z_t) within a float32 bound of that sum;
- sum R / R_out is printed with and without the embedding shares (random weights: it shows what
  biases, class token, position embedding and AttnLRP's softmax absorb, not a trained model's).
"""
import dataclasses
import importlib.util
import os
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="the vision transformers need the torch extra")
pytest.importorskip("torchvision", reason="the vision transformers need the torch extra")

from exporters import zoo  # noqa: E402

# loaded from its file: benchmarks/ on sys.path would shadow the transformers package (benchmarks/transformers.py)
_SPEC = importlib.util.spec_from_file_location(
    "transformer_zoo", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "transformer_zoo.py"))
transformer_zoo = sys.modules["transformer_zoo"] = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(transformer_zoo)

#: Position embedding added to the tokens (an Add of a constant (1, T, D) table): the ViTs, not Swin.
WITH_POSITION_EMBEDDING = {"vit_b_16", "deit_tiny_patch16_224", "vit_small_patch16_224"}


def _check(case):
    """Every composite of ``case``: explain_case's checks (finite relevance, output within the
    float32 envelope), the head's relevance; prints the conservation ratios."""
    for composite in case.composites:
        row = transformer_zoo.explain_case(case, composite)
        assert row["finite"] and row["within"]
        if composite in ("attnlrp", "cp_lrp"):
            assert row["head_error"] is not None, f"{case.model}: the head Gemm with an Epsilon rule was not found"
            assert np.all(row["head_error"] <= row["head_bound"]), (row["head_error"], row["head_bound"])
        assert np.all(np.isfinite(row["without"])) and np.all(row["without"] != 0)
        print(f"\n  {case.model} {composite}: output vs forward {row['difference']:.1e}, sum R / R_out "
              f"with embedding shares {transformer_zoo._ratios(row['with_shares'])}, without {transformer_zoo._ratios(row['without'])}")
        yield row


@pytest.mark.parametrize("name", list(zoo.VISION_TRANSFORMERS))
def test_vision_transformer_explains(tmp_path, name):
    if zoo.VISION_TRANSFORMERS[name][0] == "timm":
        pytest.importorskip("timm", reason="the timm models need the timm package")
    case = transformer_zoo.vision_case(name, str(tmp_path), small=True)
    for row in _check(case):
        assert (row["with_shares"] is not None) == (name in WITH_POSITION_EMBEDDING)


@pytest.mark.slow
def test_vit_b_16_at_224_explains(tmp_path):
    """The real torchvision vit_b_16 (86M parameters), attnlrp only, one image (the test budget:
    compiling and explaining it take about a minute on a shared 2-core machine)."""
    case = dataclasses.replace(transformer_zoo.vision_case("vit_b_16", str(tmp_path), batch=1), composites=("attnlrp",))
    for row in _check(case):
        assert row["with_shares"] is not None


@pytest.mark.parametrize("decomposed", [False, True], ids=["native", "decomposed"])
def test_flax_block_explains(tmp_path, decomposed):
    """jax2onnx writes LayerNormalization natively or as its E[x^2] - E[x]^2 form with a Max
    guard; canonicalization fuses the latter, so both explain alike."""
    pytest.importorskip("jax2onnx", reason="the Flax block needs the jax extra")
    case = transformer_zoo.flax_case(decomposed, str(tmp_path), tokens=8, dim=16, heads=2, mlp=32)
    exported = {n.op_type for n in onnx.load(case.path).graph.node}
    assert ("LayerNormalization" in exported) is not decomposed
    rows = list(_check(case))
    assert all(row["with_shares"] is None for row in rows)
