"""Export a torch.nn.Module to ONNX with a dynamic batch axis, and check it against torch;
export torchvision classifiers by name: ``python -m exporters.pytorch vgg16 -o vgg16.onnx
[--weights FILE] [--size 224] [--seed 0]``."""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import warnings

import numpy as np

from lrp_onnx.files import write_atomically

from . import ExportError, run_cli

OPSET = 17


def export_module(module, example, path, opset: int = OPSET, input_name: str = "input",
                  output_name: str = "logits") -> str:
    """Export ``module`` (put in eval mode) at ``path`` with the TorchScript exporter (it needs
    no extra package and names nodes after the torch modules), batch axis dynamic; then run the
    file in onnxruntime on ``example`` and check it against torch with a tolerance that holds
    on any CPU (``exporters.check``): with t64 the output of a float64 deep copy of the module
    on ``example.double()`` and t32 torch's own float32 output,

        max|ort - t64| <= K * max|t32 - t64| + FLOOR_ULPS * 2^-24 * max|t64| * sqrt(depth)

    (K = 4, FLOOR_ULPS = 8, depth = the module's parameterised layers): onnxruntime may make
    float32 rounding errors of the order of torch's own (other kernels, other summation
    orders; 1.3e-4 of the scale on Inception-v3 with AVX2 kernels), not 4 times more. On a
    failure the file is removed and RuntimeError raised."""
    import torch

    from .check import check_export, module_depth, torch_float64

    module = module.eval()
    path = os.fspath(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), path, dynamo=False, opset_version=opset,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}},
        )
        expected = module(example).numpy()
    try:
        exact = torch_float64(module, example)
    except Exception as exc:   # a module with float32-only code (buffers made in forward, ...)
        os.remove(path)
        raise RuntimeError(f"cannot check the export: the module does not run in float64 "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    check_export(path, {input_name: example.numpy()}, "torch", expected, exact, module_depth(module))
    return path


def classifier_names():
    """The torchvision classification models (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _load_state_dict(path):
    """The state_dict in ``path`` (torch.load, weights_only); ExportError if the file is not
    a torch file or holds no mapping of names to tensors."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # pickle, zip and torch raise many types for a foreign file
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ExportError(f"{path} is not a torch weights file ({type(exc).__name__}: {detail})") from None
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ExportError(f"{path} holds a {type(state).__name__}, not a state_dict (a mapping of parameter names to tensors)")
    return state


def _fit_weights(module, state, path, name):
    """Load ``state`` into ``module`` exactly (strict), or raise ExportError listing missing
    and unexpected keys and shape mismatches (at most 3 of each)."""
    own = module.state_dict()
    problems = []
    for label, keys in (("missing", [k for k in own if k not in state]), ("unexpected", [k for k in state if k not in own])):
        if keys:
            problems.append(f"{len(keys)} {label} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:3])}{'; ...' if len(shapes) > 3 else ''})")
    if problems:
        raise ExportError(f"{path} does not fit torchvision's {name}: {', '.join(problems)}")
    module.load_state_dict(state, strict=True)


def export_torchvision(name: str, path, weights=None, size: int = 224, seed: int = 0) -> str:
    """Export torchvision's classifier ``name`` to ``path`` (atomically) with input "input"
    (N, 3, size, size) and output "logits": weights from the state_dict file ``weights``, or
    seeded random ones (torch.manual_seed(seed) before construction). The export is checked
    against torch by ``export_module`` on a seeded random input."""
    import torch
    import torchvision

    names = classifier_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise ExportError(f"unknown torchvision classifier {name!r}; {hint}")
    state = _load_state_dict(weights) if weights is not None else None
    torch.manual_seed(seed)
    module = torchvision.models.get_model(name, weights=None).eval()
    if state is not None:
        _fit_weights(module, state, os.fspath(weights), name)
    example = torch.randn(1, 3, size, size)
    try:
        with torch.no_grad():
            module(example)
    except RuntimeError as exc:
        raise ExportError(f"{name} cannot run on a (1, 3, {size}, {size}) input: {str(exc).splitlines()[0][:200]}") from None
    write_atomically(path, lambda tmp: export_module(module, example, tmp))
    return os.fspath(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters.pytorch", description="a torchvision classifier -> ONNX")
    parser.add_argument("name", help="a torchvision classifier, e.g. vgg16, resnet18")
    parser.add_argument("-o", "--output", required=True, help="where to write the ONNX model")
    parser.add_argument("--weights", help="a state_dict file (e.g. vgg16-397923af.pth); default: seeded random weights")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed for random weights and the check input")

    def run(args):
        export_torchvision(args.name, args.output, args.weights, args.size, args.seed)
        print(f"wrote {args.output}: input 'input' (N, 3, {args.size}, {args.size}), output 'logits', "
              f"{'weights from ' + args.weights if args.weights else f'random weights (seed {args.seed})'}")

    return run_cli(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
