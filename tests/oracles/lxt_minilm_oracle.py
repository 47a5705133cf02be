"""The LXT oracle of the pretrained all-MiniLM-L6-v2's similarity: LXT 2.1's relevance per token.

Runs in .venv-lxt (transformers 4.52.4 loads the same safetensors folder). Reads IN.npz
(``input_ids``, ``attention_mask``, ``token_type_ids`` of N sentences A, and ``target`` (N, H):
the embedding e_B of each partner sentence), and writes OUT/attnlrp.npz and OUT/cp_lrp.npz, each
with ``relevance:<table>`` and ``relevance32:<table>`` (LXT's relevance per token, summed over the
hidden axis, in float64 and in float32: the envelope of the tolerance, tests/tolerances.py),
``table:<table>`` (each embedding table, to find it in the ONNX model), ``embedding`` (e_A in
float64) and ``meta`` (the depth).

    .venv-lxt/bin/python tests/oracles/lxt_minilm_oracle.py FOLDER IN.npz OUT

The explained score is the similarity <e_A, e_B> with e_B held fixed: e_A = mean_t(h_t) /
||mean_t(h_t)|| (sentence-transformers' mean pooling over the attention mask and Normalize),
relevance Gradient x Input at the embedding lookups. The norm (like LayerNorm's sigma in LXT's
``layer_norm_forward``) and the token count are constants of the sample: the norm is detached.

AttnLRP: LXT's BERT map ``lxt.efficient.models.bert.attnLRP``. CP-LRP: LXT 2.1 has no CP-LRP
map for BERT; this one is built as LXT builds its ``cp_LRP`` maps for GPT-2 and Llama
(``patches.patch_cp_attention``: the gradient stopped at the queries and keys, so the attention
probabilities are constants) on top of its BERT map, whose two halvings of the attention
products (``divide_gradient(., 2)``, AttnLRP's uniform rule) then no longer apply: with the
probabilities constant, A V is linear in V and Q K^T carries no gradient. LXT's patches are
process-wide and irreversible, but CP-LRP only adds to the AttnLRP map, so one process computes
AttnLRP first, then CP-LRP.
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repository: exporters.check
from lxt_oracle import frozen, track_embeddings  # noqa: E402
from exporters.check import module_depth  # noqa: E402


def patch_attnlrp():
    """Apply LXT's BERT map (before a model is built: it replaces BERT's classes)."""
    import transformers.models.bert.modeling_bert as modeling_bert
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import bert as lxt_bert

    monkey_patch(modeling_bert, lxt_bert.attnLRP)


def patch_cp_lrp(models):
    """Turn the AttnLRP map into CP-LRP (module doc): no halving, queries and keys stopped."""
    from lxt.efficient.models import bert as lxt_bert
    from lxt.efficient.rules import stop_gradient

    lxt_bert.divide_gradient = lambda x, factor: x   # no uniform rule: one factor is constant
    for model in models:
        for layer in model.encoder.layer:
            for projection in (layer.attention.self.query, layer.attention.self.key):
                projection.register_forward_hook(lambda _, __, out: stop_gradient(out))


def embed(model, inputs):
    """e_A: the mean of the last hidden states over the mask, divided by its (detached) norm."""
    hidden = model(**inputs).last_hidden_state
    keep = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)
    return mean / mean.norm(dim=-1, keepdim=True).detach()


def relevance(model, inputs, target):
    """LXT's relevance of <e_A, e_B> per sample and embedding table (one backward per sample: the
    position embedding is shared by the batch), and e_A."""
    dtype = next(model.parameters()).dtype
    found, handles = track_embeddings(model)
    result, embeddings = {}, []
    for i in range(len(target)):
        e = embed(model, {k: v[i:i + 1] for k, v in inputs.items()})
        (e * torch.from_numpy(target[i:i + 1]).to(dtype)).sum().backward()
        embeddings.append(e.detach()[0].numpy())
        for name, out in found.items():
            result.setdefault(f"{name}.weight", []).append((out * out.grad).sum(-1).detach()[0].numpy())
    for handle in handles:
        handle.remove()
    return {k: np.stack(v) for k, v in result.items()}, np.stack(embeddings)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("inputs")
    parser.add_argument("out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import BertModel

    patch_attnlrp()
    with np.load(args.inputs) as data:
        inputs = {k: torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        target = data["target"]
    single = frozen(BertModel.from_pretrained(args.folder, attn_implementation="eager"))
    double = frozen(copy.deepcopy(single).double())   # float64: the reference's rounding is negligible
    tables = {f"table:{n}.weight": m.weight.detach().float().numpy() for n, m in single.named_modules()
              if isinstance(m, torch.nn.Embedding)}
    meta = json.dumps({"depth": module_depth(single)})
    for method in ("attnlrp", "cp_lrp"):
        if method == "cp_lrp":
            patch_cp_lrp((single, double))
        arrays = {f"relevance32:{k}": v for k, v in relevance(single, inputs, target)[0].items()}
        found, embedding = relevance(double, inputs, target)
        arrays.update({f"relevance:{k}": v for k, v in found.items()})
        np.savez(Path(args.out) / f"{method}.npz", embedding=embedding, **arrays, **tables, meta=np.array(meta))
    print(json.dumps({"wrote": args.out, "sources": sorted(found)}))


if __name__ == "__main__":
    main()
