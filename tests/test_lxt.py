"""LXT 2.1 (the AttnLRP authors' library) as the oracle of AttnLRP and CP-LRP on transformers.

tests/oracles/lxt_oracle.py runs in its own environment (.venv-lxt: LXT 2.1 needs
transformers 4.52.4; build it with ``bash tests/oracles/make_lxt_venv.sh``), one process per
model, since LXT's patches are process-wide and irreversible. It builds a small model from a
seed, exports it to ONNX before patching, and saves LXT's relevance; here lrp_onnx compiles that
ONNX file, explains the same inputs and targets, and compares.

LXT's efficient mode is gradient x input: its linear layers, sums and products have no
stabilizer (LRP-0), where lrp_onnx's presets add 1e-6 sgn(z) (and 1e-8 in products). That
changes a unit's relevance by 1e-6 / |z|: up to 5e-3 of max|R| on these small random models
with small logits (BERT's are 0.02). So the comparison compiles the presets with stabilizers of
1e-12 (``EXACT``: ``epsilon``, ``uniform_epsilon`` and ``sum_epsilon``; only the Gamma/Epsilon
rules of the zennit composites, ``stabilizer``, keep zennit's 1e-6), and the rules must then
agree to 1e-4 of max|R| per sample: both sides in float32 (LXT's
reference runs in float64), unit roundoff 6e-8 over some hundred operations per path, with the
divisions R / z amplifying it where z is small. Each case also explains with a deliberately
wrong composite (AttnLRP for CP-LRP and the reverse; Epsilon for Gamma): its difference must
exceed the tolerance tenfold. The measured differences are printed (pytest -s). LXT 2.1 maps
BERT with AttnLRP only (lxt.efficient.models.bert has no CP-LRP map). The ViT cases use the
presets vit_gamma and vit_epsilon themselves (LXT's recipe: composites._lxt_vit).

torchvision's vit_b_16 itself (``slow``: minutes) has 63 parameterised layers, where an
a-priori bound no longer fits: its tolerance is measured as tests/tolerances.py does, the
oracle also running LXT in float32.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

import lrp_onnx
from lrp_onnx import composites
from tolerances import envelope_ratio, within_envelope

ROOT = Path(__file__).resolve().parents[1]
LXT_PYTHON = Path(os.environ.get("LXT_PYTHON", ROOT / ".venv-lxt" / "bin" / "python"))
ORACLE = ROOT / "tests" / "oracles" / "lxt_oracle.py"
TOLERANCE = 1e-4

MISSING = f"LXT's environment {LXT_PYTHON} is missing: build it with `bash tests/oracles/make_lxt_venv.sh`"
#: Outside CI a missing environment skips these tests; CI must build it (`make test` does).
pytestmark = pytest.mark.skipif(not LXT_PYTHON.exists() and os.environ.get("CI") != "true", reason=MISSING)

EXACT = 1e-12   # the stabilizers where LXT has none


def preset(name):
    """The preset ``name`` (attnlrp, cp_lrp, vit_gamma, vit_epsilon) with LXT's stabilizers."""
    return getattr(composites, name)(epsilon=EXACT, uniform_epsilon=EXACT, sum_epsilon=EXACT)


#: Every token model is exported with its batch and sequence dynamic (Llama too: RoPE's Slices
#: find their elements at run time, ops/slicing.py).
CASES = {   # id: (model, LXT map, oracle options, lrp_onnx's preset, a wrong preset)
    "vit-gamma": ("vit", "cp_lrp", ("--gamma", "0.25", "0.05"), "vit_gamma", "vit_epsilon"),
    "vit-epsilon": ("vit", "cp_lrp", ("--epsilon",), "vit_epsilon", "vit_gamma"),
    "bert-attnlrp": ("bert", "attnlrp", (), "attnlrp", "cp_lrp"),
    "gpt2-attnlrp": ("gpt2", "attnlrp", (), "attnlrp", "cp_lrp"),
    "gpt2-cp_lrp": ("gpt2", "cp_lrp", (), "cp_lrp", "attnlrp"),
    "llama-attnlrp": ("llama", "attnlrp", (), "attnlrp", "cp_lrp"),
    "llama-cp_lrp": ("llama", "cp_lrp", (), "cp_lrp", "attnlrp"),
}
#: torchvision's vit_b_16 itself (224x224, patch 16, 12 layers, 12 heads, dim 768; seeded random
#: weights, the head re-drawn), one image, with LXT's recipe's two zennit composites; each
#: preset's relevance is also compared with the other recipe's LXT relevance (the wrong one).
VIT_B_16 = {"vit_gamma": ("--gamma", "0.25", "0.05"), "vit_epsilon": ("--epsilon",)}
for _name, _options in VIT_B_16.items():
    CASES[f"vit_b_16-{_name}"] = ("vit", "cp_lrp", ("--size", "base", "--batch", "1", "--float32", *_options), _name,
                                  None)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(ONNX path, the oracle's arrays) of a case, made once per module by a subprocess."""
    made = {}

    def run(case):
        if not LXT_PYTHON.exists():   # in CI
            pytest.fail(MISSING)
        if case not in made:
            model, method, options = CASES[case][:3]
            out = tmp_path_factory.mktemp("lxt") / case
            done = subprocess.run([str(LXT_PYTHON), str(ORACLE), model, method, str(out), *options],
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"the LXT oracle failed:\n{done.stderr[-3000:]}"
            with np.load(f"{out}.npz") as data:
                made[case] = (f"{out}.onnx", {k: data[k] for k in data.files})
        return made[case]

    return run


def lrp_onnx_relevance(path, data, composite):
    """lrp_onnx's relevance of the oracle's inputs and targets, keyed like the oracle's."""
    ex = lrp_onnx.Explainer(path, composite=composite)
    inputs = {k[len("input:"):]: v for k, v in data.items() if k.startswith("input:")}
    res = ex.explain(inputs if len(inputs) > 1 else next(iter(inputs.values())), target=data["target"])
    np.testing.assert_allclose(res.output, data["logits"], rtol=1e-4, atol=1e-5 * np.abs(data["logits"]).max())
    tables = {t.name: numpy_helper.to_array(t) for t in ex.forward_model.graph.initializer}
    found = {}
    for key in (k for k in data if k.startswith("relevance:")):
        name = key[len("relevance:"):]
        if f"table:{name}" not in data:   # a float input
            found[key] = res.sources[name]
            continue
        table = data[f"table:{name}"]   # the ONNX export may rename a (tied) table: find it by value
        source = next(s for s in ex.compiled.sources if s.is_embedding and tables[s.table].shape == table.shape
                      and np.array_equal(tables[s.table], table))
        found[key] = res.sources[source.name]
    return found


def worst(found, data):
    """max over sources and samples of max|R_lrp_onnx - R_LXT| / max|R_LXT| (per sample)."""
    errors = []
    for key, got in found.items():
        expected = data[key].reshape(len(data[key]), -1)
        scale = np.abs(expected).max(axis=1)
        errors.append((np.abs(got.reshape(len(got), -1) - expected).max(axis=1) / scale).max())
    return float(max(errors))


@pytest.mark.parametrize("case", sorted(c for c in CASES if not c.startswith("vit_b_16")))
def test_relevance_agrees_with_lxt(oracle, case):
    path, data = oracle(case)
    composite, wrong = CASES[case][3:]
    error = worst(lrp_onnx_relevance(path, data, preset(composite)), data)
    wrong_error = worst(lrp_onnx_relevance(path, data, preset(wrong)), data)
    print(f"\n{case}: max|diff| / max|R| = {error:.2e} (wrong composite: {wrong_error:.2e}); "
          f"{json.loads(str(data['meta']))}", file=sys.stderr)
    assert error <= TOLERANCE
    assert wrong_error > 10 * TOLERANCE


@pytest.mark.slow
def test_vit_b_16_agrees_with_lxt(oracle):
    """vit_gamma and vit_epsilon on vit_b_16 against LXT's recipe with zennit's Gamma and Epsilon
    composites. 63 parameterised layers (the oracle's meta "depth"), so the tolerance is
    measured (tests/tolerances.py): lrp_onnx's float32 relevance must lie within
    K * max|R_LXT32 - R_LXT64| + floor(depth) of LXT's float64 one (envelope ratio <= 1), and
    each preset must miss the other recipe's relevance tenfold."""
    runs = {name: oracle(f"vit_b_16-{name}") for name in VIT_B_16}
    (path, first), (_, second) = runs.values()
    np.testing.assert_array_equal(first["input:image"], second["input:image"])   # one model, one image
    found = {name: lrp_onnx_relevance(path, first, preset(name))["relevance:image"] for name in VIT_B_16}
    for name, (_, data) in runs.items():
        meta = json.loads(str(data["meta"]))
        ratio = within_envelope(found[name], data["relevance32:image"], data["relevance:image"], meta["depth"],
                                f"vit_b_16 {name} against LXT")
        for other in set(VIT_B_16) - {name}:
            wrong = envelope_ratio(found[other], data["relevance32:image"], data["relevance:image"], meta["depth"])
            print(f"  {other} against LXT's {name} recipe: error / tolerance = {wrong:.3g}", file=sys.stderr)
            assert wrong > 10
        assert ratio <= 1
