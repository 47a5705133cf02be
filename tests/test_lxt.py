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
1e-12 (``EXACT``; the sums' through ops.arithmetic.SUM_EPSILON, which no composite sets; only
the Gamma/Epsilon rules of the zennit composites keep zennit's 1e-6), and the rules must then
agree to 1e-4 of max|R| per sample: both sides in float32 (LXT's
reference runs in float64), unit roundoff 6e-8 over some hundred operations per path, with the
divisions R / z amplifying it where z is small. Each case also explains with a deliberately
wrong composite (AttnLRP for CP-LRP and the reverse; Epsilon for Gamma): its difference must
exceed the tolerance tenfold. The measured differences are printed (pytest -s). LXT 2.1 maps
BERT with AttnLRP only (lxt.efficient.models.bert has no CP-LRP map).
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
from lrp_onnx import Composite, Family, Name, composites, rules
from lrp_onnx.ops import arithmetic

ROOT = Path(__file__).resolve().parents[1]
LXT_PYTHON = Path(os.environ.get("LXT_PYTHON", ROOT / ".venv-lxt" / "bin" / "python"))
ORACLE = ROOT / "tests" / "oracles" / "lxt_oracle.py"
TOLERANCE = 1e-4

MISSING = f"LXT's environment {LXT_PYTHON} is missing: build it with `bash tests/oracles/make_lxt_venv.sh`"
#: Outside CI a missing environment skips these tests; CI must build it (`make test` does).
pytestmark = pytest.mark.skipif(not LXT_PYTHON.exists() and os.environ.get("CI") != "true", reason=MISSING)

EXACT = 1e-12   # the stabilizers where LXT has none

#: The projections inside torchvision's nn.MultiheadAttention run as F.linear, not as nn.Linear
#: modules, so zennit's rules (module hooks) never reach them: LXT leaves them LRP-0.
ATTENTION_PROJECTIONS = Name(r"self_attention/(MatMul|Gemm)$")


def transformer(method):
    return getattr(composites, method)(epsilon=EXACT, uniform_epsilon=EXACT)


def vit(gamma):
    """LXT's ViT recipe (its examples/vit_torch.py): zennit's Gamma(conv) on Conv2d and
    Gamma(linear) on nn.Linear, or zennit's Epsilon(1e-6) on both; CP-LRP inside attention."""
    linear = ((Family("linear"), rules.Epsilon(1e-6)),) if gamma is None else (
        (Family("conv"), rules.Gamma(gamma[0], 1e-6)), (Family("dense"), rules.Gamma(gamma[1], 1e-6)))
    return Composite(((ATTENTION_PROJECTIONS, rules.Epsilon(EXACT)),) + linear + transformer("cp_lrp").rules,
                     "winner", "lxt_vit")


#: Llama is exported with static sizes: its Reshape to (N, T, -1, head_dim) leaves the head count
#: unknown to shape inference when N and T are symbolic, and the Slice handler (RoPE's
#: rotate_half) needs it.
CASES = {   # id: (model, LXT map, oracle options, the composite, a wrong composite)
    "vit-gamma": ("vit", "cp_lrp", ("--gamma", "0.25", "0.05"), lambda: vit((0.25, 0.05)), lambda: vit(None)),
    "vit-epsilon": ("vit", "cp_lrp", ("--epsilon",), lambda: vit(None), lambda: vit((0.25, 0.05))),
    "bert-attnlrp": ("bert", "attnlrp", (), lambda: transformer("attnlrp"), lambda: transformer("cp_lrp")),
    "gpt2-attnlrp": ("gpt2", "attnlrp", (), lambda: transformer("attnlrp"), lambda: transformer("cp_lrp")),
    "gpt2-cp_lrp": ("gpt2", "cp_lrp", (), lambda: transformer("cp_lrp"), lambda: transformer("attnlrp")),
    "llama-attnlrp": ("llama", "attnlrp", ("--static",), lambda: transformer("attnlrp"), lambda: transformer("cp_lrp")),
    "llama-cp_lrp": ("llama", "cp_lrp", ("--static",), lambda: transformer("cp_lrp"), lambda: transformer("attnlrp")),
}


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


@pytest.mark.parametrize("case", sorted(CASES))
def test_relevance_agrees_with_lxt(oracle, case, monkeypatch):
    monkeypatch.setattr(arithmetic, "SUM_EPSILON", EXACT)   # the sums' stabilizer (no composite option)
    path, data = oracle(case)
    composite, wrong = CASES[case][3:]
    error = worst(lrp_onnx_relevance(path, data, composite()), data)
    wrong_error = worst(lrp_onnx_relevance(path, data, wrong()), data)
    print(f"\n{case}: max|diff| / max|R| = {error:.2e} (wrong composite: {wrong_error:.2e}); "
          f"{json.loads(str(data['meta']))}", file=sys.stderr)
    assert error <= TOLERANCE
    assert wrong_error > 10 * TOLERANCE
