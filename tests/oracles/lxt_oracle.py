"""The LXT oracle: a transformer from a seed, its ONNX export, and LXT 2.1's relevance.

Runs in .venv-lxt (tests/oracles/make_lxt_venv.sh), one model per process: LXT's patches
replace classes and functions process-wide and cannot be undone. Writes

    OUT.onnx   the model, exported BEFORE patching (TorchScript exporter, opset 17; batch and,
               for token models, sequence length dynamic)
    OUT.npz    ``input:<name>`` the inputs; ``relevance:<source>`` LXT's relevance, computed in
               float64 from the same float32 weights (the image's per pixel and channel; per
               token for each embedding table, summed over the hidden axis); ``table:<source>``
               each embedding table (to find it in the ONNX model); ``logits`` and ``target``
               (the explained class per sample: the arg-max, at the last position for a causal
               LM); with ``--float32`` also ``relevance32:<source>``, the same relevance in float32
               (the envelope of a deep model's tolerance, tests/tolerances.py); ``meta`` (model,
               seed, ``depth``: exporters.check.module_depth). With ``--time R``: no relevance,
               but OUT.json with the median seconds of
               LXT's relevance of the batch and of torch's forward (benchmarks/transformer_speed.py).

    .venv-lxt/bin/python tests/oracles/lxt_oracle.py MODEL METHOD OUT [--seed S] [--gamma CONV LINEAR]
        [--epsilon] [--size small|base] [--batch N] [--tokens T] [--time R] [--threads K] [--float32]

MODEL: vit, bert, gpt2, llama. METHOD: attnlrp or cp_lrp (LXT's maps; vit: cp_lrp, with zennit's
Gamma(CONV) on Conv2d and Gamma(LINEAR) on Linear, or ``--epsilon`` for zennit's Epsilon on both).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repository: exporters.check
from exporters.check import module_depth  # noqa: E402

#: Model sizes: "small" for the tests (seconds), "base" for benchmarks/transformer_speed.py
#: (ViT-B/16 at 224x224, a BERT-base-sized encoder).
SIZES = ("small", "base")


def vit(seed, batch, tokens, size):
    from torchvision.models import vision_transformer

    def build():
        model = (vision_transformer.vit_b_16() if size == "base" else vision_transformer.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10))
        torch.nn.init.normal_(model.heads.head.weight, std=0.2)   # torchvision zero-initialises the head
        torch.nn.init.normal_(model.heads.head.bias, std=0.2)
        return model
    torch.manual_seed(seed)
    image = 224 if size == "base" else 32
    return build, {"image": torch.randn(batch, 3, image, image)}


def _tokens(seed, batch, tokens, vocab, **extra):
    generator = torch.Generator().manual_seed(seed + 1)
    return {"input_ids": torch.randint(0, vocab, (batch, tokens), generator=generator), **extra}


def bert(seed, batch, tokens, size):
    from transformers import BertConfig, BertForSequenceClassification
    shape = {} if size == "base" else dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=24)
    config = BertConfig(**shape, type_vocab_size=2, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation="eager")
    torch.manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1:, -2:] = 0   # every sample but the first is padded
    token_types = torch.zeros(batch, tokens, dtype=torch.long)
    token_types[:, tokens // 2:] = 1
    return (lambda: BertForSequenceClassification(config)), _tokens(seed, batch, tokens, config.vocab_size,
                                                                    attention_mask=mask, token_type_ids=token_types)


def gpt2(seed, batch, tokens, size):
    from transformers import GPT2Config, GPT2LMHeadModel
    shape = {} if size == "base" else dict(vocab_size=40, n_positions=24, n_embd=32, n_layer=2, n_head=2)
    config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
                        use_cache=False)
    torch.manual_seed(seed)
    return (lambda: GPT2LMHeadModel(config)), _tokens(seed, batch, tokens, config.vocab_size)


def llama(seed, batch, tokens, size):
    from transformers import LlamaConfig, LlamaForCausalLM
    shape = {} if size == "base" else dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24)
    config = LlamaConfig(**shape, attn_implementation="eager", use_cache=False)   # GQA, RoPE, RMSNorm, SwiGLU
    torch.manual_seed(seed)
    return (lambda: LlamaForCausalLM(config)), _tokens(seed, batch, tokens, config.vocab_size)


MODELS = {"vit": vit, "bert": bert, "gpt2": gpt2, "llama": llama}


class Logits(torch.nn.Module):
    """The model with tensors in, logits out (what the ONNX export and LXT both run)."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        out = self.model(**dict(zip(self.names, args))) if self.names != ["image"] else self.model(*args)
        return out if isinstance(out, torch.Tensor) else out.logits


def export(module, inputs, path):
    """The TorchScript export (opset 17): batch and sequence length dynamic."""
    names = list(inputs)
    sequence = {} if names == ["image"] else {1: "sequence"}
    axes = {name: {0: "batch", **sequence} for name in names}
    axes["logits"] = {0: "batch", **sequence} if isinstance(module.model, _causal_lm()) else {0: "batch"}
    torch.backends.mha.set_fastpath_enabled(False)   # the fused kernel has no ONNX export
    with torch.no_grad():
        torch.onnx.export(module, tuple(inputs.values()), path, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False,
                          do_constant_folding=True)


def _causal_lm():
    from transformers import GPT2LMHeadModel, LlamaForCausalLM
    return (GPT2LMHeadModel, LlamaForCausalLM)


def patch(name, method, gamma):
    """Apply LXT's map (and, for the ViT, zennit's composite); returns the composite or None."""
    from lxt.efficient import monkey_patch
    if name == "vit":
        import zennit.rules as z
        from torchvision.models import vision_transformer
        from zennit.composites import LayerMapComposite

        from lxt.efficient import monkey_patch_zennit
        assert method == "cp_lrp", "LXT 2.1 maps the torchvision ViT with CP-LRP only"
        monkey_patch(vision_transformer)
        monkey_patch_zennit()
        rules = ([(torch.nn.Conv2d, z.Epsilon(1e-6)), (torch.nn.Linear, z.Epsilon(1e-6))] if gamma is None else
                 [(torch.nn.Conv2d, z.Gamma(gamma[0])), (torch.nn.Linear, z.Gamma(gamma[1]))])
        return LayerMapComposite(rules)
    import importlib
    lxt_module = importlib.import_module(f"lxt.efficient.models.{name}")
    hf_module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    maps = {"attnlrp": "attnLRP", "cp_lrp": "cp_LRP"}
    if not hasattr(lxt_module, maps[method]):
        raise SystemExit(f"LXT 2.1 has no {method} map for {name}")
    monkey_patch(hf_module, getattr(lxt_module, maps[method]))
    return None


def track_embeddings(module):
    """Forward hooks that make each nn.Embedding output a leaf with a gradient (the parameters
    are frozen) and keep it: ({module name: output}, the hook handles)."""
    found = {}

    def keep(name):
        def hook(_, __, out):
            out.requires_grad_(True)
            found[name] = out
        return hook

    return found, [m.register_forward_hook(keep(n)) for n, m in module.named_modules()
                   if isinstance(m, torch.nn.Embedding)]


def lxt_relevance(module, inputs, target, composite):
    """LXT's relevance of each sample, one backward pass per sample (a position embedding is
    shared by the batch: its gradient would sum the samples), in the module's float type."""
    dtype = next(module.parameters()).dtype
    found, handles = track_embeddings(module)
    embeddings = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Embedding)]
    if composite is not None:
        composite.register(module)
    result = {}
    for i in range(len(next(iter(inputs.values())))):
        args = [v[i:i + 1].to(dtype) if v.is_floating_point() else v[i:i + 1].clone() for v in inputs.values()]
        if embeddings:
            logits = module(*args)
        else:
            args[0].requires_grad_(True)
            logits = module(*args)
        score = logits[0, -1, target[i]] if logits.ndim == 3 else logits[0, target[i]]
        score.backward()
        if embeddings:
            parts = {f"{n}.weight": (found[n] * found[n].grad).sum(-1).detach() for n, _ in embeddings}
        else:
            parts = {"image": (args[0] * args[0].grad).detach()}
        for key, value in parts.items():
            result.setdefault(key, []).append(value[0].numpy())
    for handle in handles:
        handle.remove()
    if composite is not None:
        composite.remove()
    return {key: np.stack(values) for key, values in result.items()}


def lxt_time(module, inputs, target, composite, repeats):
    """Median seconds of LXT's relevance of the whole batch (one backward of the summed target
    scores, as LXT is used), and of the plain forward; after one warm-up run."""
    _, handles = track_embeddings(module)
    if composite is not None:
        composite.register(module)
    image = list(inputs) == ["image"]

    def relevance():
        args = [v.clone().requires_grad_(True) if image else v for v in inputs.values()]
        logits = module(*args)
        picked = logits[:, -1] if logits.ndim == 3 else logits
        picked.gather(1, torch.tensor(target)[:, None]).sum().backward()

    def forward():
        with torch.no_grad():
            module(*inputs.values())

    times = {}
    for name, run in (("lxt_s", relevance), ("torch_forward_s", forward)):
        run()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        times[name] = statistics.median(samples)
    for handle in handles:
        handle.remove()
    if composite is not None:
        composite.remove()
    return times


def frozen(module):
    """``module`` in eval mode with its parameters frozen (only the inputs take gradients)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("method", choices=("attnlrp", "cp_lrp"))
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gamma", type=float, nargs=2, default=(0.25, 0.05), metavar=("CONV", "LINEAR"))
    parser.add_argument("--epsilon", action="store_true", help="vit: zennit's Epsilon(1e-6) instead of Gamma")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=7)
    parser.add_argument("--time", type=int, default=0, metavar="REPEATS",
                        help="time LXT instead of saving its relevance: OUT.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--float32", action="store_true", help="also LXT's relevance in float32: relevance32:<source>")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    build, inputs = MODELS[args.model](args.seed, args.batch, args.tokens, args.size)
    model = build().eval()
    module = Logits(model, list(inputs)).eval()
    export(module, inputs, args.out + ".onnx")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = module(*inputs.values())
    target = (logits[:, -1] if logits.ndim == 3 else logits).argmax(-1)
    arrays = {f"input:{k}": v.numpy() for k, v in inputs.items()}

    composite = patch(args.model, args.method, None if args.epsilon else args.gamma)
    model = build()   # BERT's patch replaces its classes: build the model again, same weights
    model.load_state_dict(state)
    if args.time:
        module = frozen(Logits(model.eval(), list(inputs)))
        times = lxt_time(module, inputs, target.tolist(), composite, args.time)
        np.savez(args.out + ".npz", target=target.numpy(), **arrays)
        with open(args.out + ".json", "w") as fh:
            json.dump(times, fh)
        print(json.dumps(times))
        return
    if args.float32:
        module = frozen(Logits(model.eval(), list(inputs)))
        single = lxt_relevance(module, inputs, target.tolist(), composite)
        arrays.update({f"relevance32:{k}": v for k, v in single.items()})
    module = frozen(Logits(model.eval().double(), list(inputs)))   # in float64: the reference's rounding is negligible
    relevance = lxt_relevance(module, inputs, target.tolist(), composite)
    tables = {f"{n}.weight": m.weight.detach().float().numpy() for n, m in module.named_modules()
              if isinstance(m, torch.nn.Embedding)}
    arrays.update({f"relevance:{k}": v for k, v in relevance.items()})
    arrays.update({f"table:{k}": v for k, v in tables.items()})
    gamma = list(args.gamma) if args.model == "vit" and not args.epsilon else None
    meta = {"model": args.model, "method": args.method, "seed": args.seed, "gamma": gamma,
            "size": args.size, "depth": module_depth(model)}
    np.savez(args.out + ".npz", logits=logits.numpy(), target=target.numpy(), **arrays, meta=np.array(json.dumps(meta)))
    print(json.dumps({"wrote": [args.out + ".onnx", args.out + ".npz"], "sources": sorted(relevance)}))


if __name__ == "__main__":
    main()
