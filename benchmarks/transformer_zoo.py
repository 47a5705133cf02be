"""The transformer zoo explained end to end: torchvision vit_b_16 and swin_t, timm
deit_tiny_patch16_224 and vit_small_patch16_224 (224x224), a flax.nnx transformer block
exported by jax2onnx with native and with decomposed LayerNorm, and the Hugging Face models of
exporters/huggingface.py (small configs); seeded random weights (none can be downloaded here).

    .venv/bin/python benchmarks/transformer_zoo.py [--models vit_b_16,...] [--markdown]

One row per (model, composite): compile seconds (Explainer construction), explain seconds
(one batch of 2), max |explainer output - onnxruntime's forward of the export| / max |forward|
and whether it is within the float32 envelope of the framework's float64 output
(exporters/check.py; "-" where no float64 reference is at hand), whether the relevance is
finite, and per sample sum R / R_out with and without the embedding shares: "with" is the
relevance of the embedded tokens (for a ViT/DeiT the sum after the position embedding is
added, so class token and position embedding included; for a token model every embedding
table), "without" that of the input alone (the pixels; the word embedding only).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import lrp_onnx  # noqa: E402
from lrp_onnx.rules import Epsilon  # noqa: E402
from exporters import zoo  # noqa: E402

#: The composites of each kind of row (LXT's ViT recipe for the vision models too).
VISION_COMPOSITES = ("attnlrp", "cp_lrp", "vit_gamma")
TOKEN_COMPOSITES = ("attnlrp", "cp_lrp")
#: The Flax block of the table: 16 tokens of width 64, 4 heads.
FLAX_SIZES = dict(dim=64, heads=4, mlp=128)
FLAX_TOKENS = 16


def head_of(model: onnx.ModelProto):
    """(node name, input tensor, bias) of the Gemm that computes the model's output (the
    classifier head; bias zeros where it has none), or None if another op computes it."""
    output = model.graph.output[0].name
    node = next((n for n in model.graph.node if output in n.output), None)
    if node is None or node.op_type != "Gemm":
        return None
    constants = {t.name: t for t in model.graph.initializer}
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    classes = numpy_helper.to_array(constants[node.input[1]]).shape[0 if trans_b else 1]
    bias = numpy_helper.to_array(constants[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
    return node.name, node.input[0], np.broadcast_to(bias.astype(np.float64).reshape(-1), (classes,))


def position_sum(model: onnx.ModelProto) -> Optional[str]:
    """The output of the first Add of an activation and a constant (1, T, D) table (the
    position embedding of a ViT/DeiT), or None (Swin, the Flax block: none)."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        tables = [i for i in node.input if i in constants and len(constants[i].dims) == 3 and constants[i].dims[0] == 1]
        if len(tables) == 1 and sum(i not in constants for i in node.input) == 1:
            return node.output[0]
    return None


def output_score(result) -> np.ndarray:
    """The explained score per sample: the target logit (at the last position of a sequence
    output), float64."""
    out = result.output.astype(np.float64)
    rows = np.arange(len(out))
    return out[rows, -1, result.target] if out.ndim == 3 else out.reshape(len(out), -1)[rows, result.target]


def head_relevance_error(explainer, result, head) -> np.ndarray:
    """|sum R at the head's input - expected| / |R_out| per sample, for an Epsilon rule on the
    head Gemm: expected = (z_t - b_t) z_t / (z_t + eps sgn z_t), the share of the target logit
    z_t that its weighted inputs carry (Montavon et al. 2019, eq. 4 summed over j); ``result``
    must hold the relevance of the head's input (``layers=``)."""
    name, tensor, bias = head
    epsilon = explainer.rules[name].epsilon
    z = output_score(result)
    expected = (z - bias[result.target]) * z / (z + epsilon * np.where(z >= 0, 1.0, -1.0))
    got = result.layers[tensor].reshape(len(z), -1).astype(np.float64).sum(axis=1)
    return np.abs(got - expected) / np.abs(z)


@dataclass
class Case:
    """A model of the table: its export at ``path``, a batch ``feeds`` (an array or a dict), the
    composites, and its float32 and float64 framework outputs (None where not at hand)."""

    model: str
    path: str
    feeds: object
    composites: Sequence[str]
    reference: Optional[Callable[[], tuple]] = None   # () -> (float32 output, float64 output, depth)


def explain_case(case: Case, composite: str) -> Dict:
    """One row: compile and explain ``case.feeds`` with ``composite``; raises if the relevance
    is not finite or the output differs from onnxruntime's forward of the export."""
    from exporters.check import envelope_ratio

    feeds = case.feeds if isinstance(case.feeds, dict) else {onnx.load(case.path, load_external_data=False).graph.input[0].name: case.feeds}
    options = ort.SessionOptions()
    options.log_severity_level = 3   # not the export's unused-initializer warnings
    forward = ort.InferenceSession(case.path, options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    start = time.perf_counter()
    explainer = lrp_onnx.Explainer(case.path, composite, providers=["CPUExecutionProvider"])
    compiled = time.perf_counter() - start
    tokens, head = position_sum(explainer.forward_model), head_of(explainer.forward_model)
    if head is not None and not isinstance(explainer.rules[head[0]], Epsilon):
        head = None
    start = time.perf_counter()
    result = explainer.explain(case.feeds, layers=tuple(t for t in (tokens, head and head[1]) if t))
    explained = time.perf_counter() - start
    finite = all(np.isfinite(r).all() for r in result.sources.values())
    if not finite:
        raise AssertionError(f"{case.model} {composite}: relevance is not finite")
    scale = float(np.abs(forward).max())
    difference = float(np.abs(result.output.astype(np.float64) - forward).max()) / scale
    within = None
    if case.reference is not None:
        ref32, ref64, depth = case.reference()
        within = envelope_ratio(result.output, ref32, ref64, depth) <= 1 and envelope_ratio(forward, ref32, ref64, depth) <= 1
        if not within:
            raise AssertionError(f"{case.model} {composite}: the explainer's output differs from the forward by {difference:.3g} of its scale")
    total = result.total.astype(np.float64)
    per_source = {name: r.reshape(len(total), -1).astype(np.float64).sum(axis=1) for name, r in result.sources.items()}
    if any(source.is_embedding for source in explainer.sources):   # every table with, the word embedding (the largest) without
        word = max(explainer.sources, key=lambda source: source.rows or 0).name
        with_shares, without = sum(per_source.values()) / total, per_source[word] / total
    else:
        without = next(iter(per_source.values())) / total
        with_shares = result.layers[tokens].reshape(len(total), -1).astype(np.float64).sum(axis=1) / total if tokens else None
    head_error = head_bound = None
    if head is not None:
        from exporters.check import EPS32

        head_error = head_relevance_error(explainer, result, head)
        terms = result.layers[head[1]].reshape(len(total), -1).astype(np.float64)
        # a float32 sum of D terms and the float32 z_t it divides by: <= 2 (D + 2) EPS32 sum|R_j| each (Higham 3.1)
        head_bound = 4 * (terms.shape[1] + 2) * EPS32 * np.abs(terms).sum(axis=1) / np.abs(output_score(result))
    return dict(model=case.model, composite=composite, compile_s=compiled, explain_s=explained, difference=difference,
                within=within, finite=finite, with_shares=with_shares, without=without, head_error=head_error,
                head_bound=head_bound)


def vision_case(name: str, folder: str, small: bool = False, batch: int = 2) -> Case:
    """A vision transformer of exporters.zoo, exported into ``folder``, with ``batch`` N(0, 1) images."""
    import torch

    from exporters.check import module_depth, torch_float64

    module, path = zoo.export_vision_transformer(name, os.path.join(folder, f"{name}.onnx"), small=small)
    size = zoo.SMALL_VISION_SIZE if small else 224
    x = np.random.default_rng(1).normal(size=(batch, 3, size, size)).astype(np.float32)

    @functools.cache   # one float64 run for every composite
    def reference():
        with torch.no_grad():
            ref32 = module(torch.from_numpy(x)).numpy()
        return ref32, torch_float64(module, torch.from_numpy(x)), module_depth(module)

    return Case(name, path, x, VISION_COMPOSITES, reference)


def flax_case(decomposed: bool, folder: str, tokens: int = FLAX_TOKENS, **sizes) -> Case:
    """The Flax block of exporters.zoo (native or decomposed LayerNorm), two N(0, 1) token sequences."""
    from exporters.jax import jax_float64, nnx_depth

    label = f"flax block ({'decomposed' if decomposed else 'native'} LayerNorm)"
    module, path = zoo.export_flax_block(os.path.join(folder, f"flax_{int(decomposed)}.onnx"), tokens, decomposed,
                                         **(sizes or FLAX_SIZES))
    x = np.random.default_rng(1).normal(size=(2, tokens, module.norm1.num_features)).astype(np.float32)

    @functools.cache   # one float64 run for every composite
    def reference():
        return np.asarray(module(x)), jax_float64(module, x), nnx_depth(module)

    return Case(label, path, x, TOKEN_COMPOSITES, reference)


#: Hugging Face rows: name -> (transformers config class, task, its small config). Vocabularies
#: of 1000 tokens keep the LM heads (and the (N, T, V) logits) small.
HF_MODELS = {
    "bert": ("BertConfig", "sequence-classification",
             dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)),
    "distilbert": ("DistilBertConfig", "sequence-classification", dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128)),
    "roberta": ("RobertaConfig", "sequence-classification",
                dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)),
    "gpt2": ("GPT2Config", "causal-lm", dict(n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
    "llama": ("LlamaConfig", "causal-lm", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=128)),
    "qwen2": ("Qwen2Config", "causal-lm", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=128)),
}
HF_VOCAB = 1000
#: The table's sequence length.
HF_TOKENS = 64


def hf_case(name: str, folder: str, tokens: int = HF_TOKENS) -> Case:
    """A Hugging Face model of HF_MODELS exported by exporters.huggingface (seed 0 random weights
    from its config), with two seeded random token sequences (an encoder's second one padded by
    a quarter); the float references rebuild the same model (transformers, seed 0, eager
    attention) and run it in float32 and float64."""
    import copy

    import torch
    import transformers

    from exporters.check import module_depth
    from exporters.huggingface import export_huggingface

    config_class, task, options = HF_MODELS[name]
    config = getattr(transformers, config_class)(vocab_size=HF_VOCAB, **options)
    export = export_huggingface(config, os.path.join(folder, f"{name}.onnx"), task=task)
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(3, HF_VOCAB, size=(2, tokens)).astype(np.int64),
             "attention_mask": np.ones((2, tokens), np.int64),
             "token_type_ids": (np.arange(tokens) >= tokens // 2).astype(np.int64)[None].repeat(2, 0)}
    if task != "causal-lm":
        feeds["attention_mask"][1, -tokens // 4:] = 0
    feeds = {k: feeds[k] for k in export.input_names}

    @functools.cache   # one float64 run for every composite
    def reference():
        classes = {"sequence-classification": transformers.AutoModelForSequenceClassification,
                   "causal-lm": transformers.AutoModelForCausalLM}
        config.use_cache = False
        torch.manual_seed(0)
        model = classes[task].from_config(config, attn_implementation="eager").eval()
        exact = copy.deepcopy(model).double()
        inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        with torch.no_grad():
            return model(**inputs).logits.numpy(), exact(**inputs).logits.numpy(), module_depth(model)

    return Case(name, export.path, feeds, TOKEN_COMPOSITES, reference)


def cases(names: Sequence[str], folder: str):
    """(name, a function that builds its Case) for each of ``names``."""
    for name in names:
        if name in zoo.VISION_TRANSFORMERS:
            yield name, lambda name=name: vision_case(name, folder)
        elif name in ("flax", "flax_decomposed"):
            yield name, lambda name=name: flax_case(name == "flax_decomposed", folder)
        elif name in HF_MODELS:
            yield name, lambda name=name: hf_case(name, folder)
        else:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(ALL)}")


ALL = (*zoo.VISION_TRANSFORMERS, "flax", "flax_decomposed", *HF_MODELS)


def _ratios(values) -> str:
    return "-" if values is None else " / ".join(f"{v:.3f}" for v in values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ALL), help=f"comma-separated, from {', '.join(ALL)}")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    header = ("model", "composite", "compile s", "explain s", "output vs forward", "finite",
              "sum R / R_out with embedding shares", "without")
    print("| " + " | ".join(header) + " |" if args.markdown else "  ".join(header), flush=True)
    if args.markdown:
        print("|" + "---|" * len(header))
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        for name, build in cases([n for n in args.models.split(",") if n], folder):
            try:
                case = build()
            except Exception as exc:   # report and go on with the next model
                failures += 1
                print(f"{name}: EXPORT FAILED: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                continue
            for composite in case.composites:
                try:
                    r = explain_case(case, composite)
                except Exception as exc:
                    failures += 1
                    print(f"{case.model} {composite}: FAILED: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                    continue
                same = f"{r['difference']:.1e}" + ("" if r["within"] is None else " (yes)")
                cells = (r["model"], r["composite"], f"{r['compile_s']:.1f}", f"{r['explain_s']:.2f}", same,
                         "yes" if r["finite"] else "NO", _ratios(r["with_shares"]), _ratios(r["without"]))
                print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
