"""The pretrained all-MiniLM-L6-v2's similarity explained by lrp_onnx and by LXT 2.1 (issue 14 a).

Sentence A is explained with its partner B's embedding held fixed: the relevance put on the
output is e_A * e_B (lrp_onnx's target mask e_B), summing to cos(A, B). The oracle
(tests/oracles/lxt_minilm_oracle.py, in .venv-lxt with transformers 4.52.4, one process for
both methods) loads the same safetensors folder and computes LXT's relevance per token in float64
and in float32 with LXT's BERT map (AttnLRP; CP-LRP built as LXT builds its cp_LRP maps, see
the oracle). lrp_onnx explains exporters.huggingface's export (transformers 5.24) with the
presets' stabilizers at 1e-12, where LXT has none (as tests/test_lxt.py does).

Tolerance, as tests/test_lxt.py: per sample and embedding table, max|R_lrp_onnx - R_LXT| /
max|R_LXT| <= 1e-4 (both float32 computations of a few hundred operations per path, unit
roundoff 6e-8, amplified where a division R / z meets a small z); and, since the model is 6
real layers deep, also the measured envelope of tests/tolerances.py (K * max|R_LXT32 - R_LXT64|
+ floor(depth)). The other preset (CP-LRP for AttnLRP and the reverse) must miss tenfold.
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
from test_exporters_huggingface import encode
from tolerances import envelope_ratio, within_envelope

ROOT = Path(__file__).resolve().parents[1]
LXT_PYTHON = Path(os.environ.get("LXT_PYTHON", ROOT / ".venv-lxt" / "bin" / "python"))
ORACLE = ROOT / "tests" / "oracles" / "lxt_minilm_oracle.py"
TOLERANCE = 1e-4
EXACT = 1e-12   # the stabilizers where LXT has none
MISSING = f"LXT's environment {LXT_PYTHON} is missing: build it with `bash tests/oracles/make_lxt_venv.sh`"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not LXT_PYTHON.exists() and os.environ.get("CI") != "true", reason=MISSING)]

#: (A, B): A explained against B's embedding
PAIRS = (("A man is playing a guitar on stage.", "Someone performs music with a guitar."),
         ("The stock market fell sharply today.", "A man is playing a guitar on stage."))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(the MiniLM export, the A batch, the targets e_B, the oracle's arrays per method)."""
    pytest.importorskip("torch", reason="the export needs the torch extra")
    tokenizers = pytest.importorskip("tokenizers", reason="the text extra")
    import onnxruntime as ort

    from exporters import ExportError
    from exporters.huggingface import export_huggingface, minilm_folder
    if not LXT_PYTHON.exists():   # in CI
        pytest.fail(MISSING)
    try:
        folder = minilm_folder()
    except ExportError as exc:
        pytest.skip(str(exc))
    work = tmp_path_factory.mktemp("lxt_minilm")
    done = export_huggingface(folder, work / "minilm.onnx", check=False)   # tests/test_exporters_huggingface checks it
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    a = encode(tokenizer, [p[0] for p in PAIRS])
    session = ort.InferenceSession(done.path, providers=["CPUExecutionProvider"])
    e_b = np.concatenate([session.run(None, encode(tokenizer, [p[1]]))[0] for p in PAIRS])   # each B alone
    np.savez(work / "inputs.npz", target=e_b, **a)
    ran = subprocess.run([str(LXT_PYTHON), str(ORACLE), str(folder), str(work / "inputs.npz"), str(work)],
                         capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, f"the LXT MiniLM oracle failed:\n{ran.stderr[-3000:]}"
    oracle = {}
    for method in ("attnlrp", "cp_lrp"):
        with np.load(work / f"{method}.npz") as data:
            oracle[method] = {k: data[k] for k in data.files}
    return done, a, e_b, oracle


def preset(name):
    return getattr(composites, name)(epsilon=EXACT, uniform_epsilon=EXACT, sum_epsilon=EXACT)


@pytest.fixture(scope="module")
def explained(setup):
    """preset name -> (lrp_onnx's relevance per token keyed like the oracle's, e_A), computed once."""
    done, a, e_b, oracle = setup
    made = {}

    def run(name):
        if name not in made:
            ex = lrp_onnx.Explainer(done.path, preset(name))
            res = ex.explain(a, target=e_b)
            np.testing.assert_allclose(res.total, (res.output * e_b).sum(1), rtol=1e-6)   # the similarity is explained
            tables = {t.name: numpy_helper.to_array(t) for t in ex.forward_model.graph.initializer}
            found = {}
            for key in (k for k in oracle[name] if k.startswith("relevance:")):
                table = oracle[name][f"table:{key[len('relevance:'):]}"]   # the ONNX names differ: find it by value
                source = next(s for s in ex.compiled.sources if s.is_embedding and tables[s.table].shape == table.shape
                              and np.array_equal(tables[s.table], table))
                found[key] = res.sources[source.name] * a["attention_mask"]   # LXT's padded tokens: none
            made[name] = found, res.output
        return made[name]

    return run


def worst(found, data):
    """max over tables and samples of max|R_lrp_onnx - R_LXT| / max|R_LXT| (per sample)."""
    return float(max((np.abs(got - data[k]).max(axis=1) / np.abs(data[k]).max(axis=1)).max() for k, got in found.items()))


@pytest.mark.parametrize("method,wrong", [("attnlrp", "cp_lrp"), ("cp_lrp", "attnlrp")])
def test_minilm_agrees_with_lxt(setup, explained, method, wrong):
    data = setup[3][method]
    (found, embedding), (wrong_found, _) = explained(method), explained(wrong)
    np.testing.assert_allclose(embedding, data["embedding"], atol=1e-5)   # the same function on both sides
    error, wrong_error = worst(found, data), worst(wrong_found, data)
    depth = json.loads(str(data["meta"]))["depth"]

    def f32(key):
        return data[f"relevance32:{key[len('relevance:'):]}"]
    ratios = [within_envelope(got, f32(k), data[k], depth, f"MiniLM {method} {k}") for k, got in found.items()]
    wrong_ratio = max(envelope_ratio(got, f32(k), data[k], depth) for k, got in wrong_found.items())
    print(f"\nMiniLM {method}: max|diff| / max|R| = {error:.2e} (wrong preset {wrong}: {wrong_error:.2e}); "
          f"envelope ratio {max(ratios):.3g} (wrong: {wrong_ratio:.3g})", file=sys.stderr)
    assert error <= TOLERANCE and max(ratios) <= 1
    assert wrong_error > 10 * TOLERANCE and wrong_ratio > 10
