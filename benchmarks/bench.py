"""Side-by-side timing of LRP on VGG-16 and ResNet-50 (torchvision, seeded random weights), CPU.

Contenders, all in one process and alternated round by round (the order rotates each round, so
no contender always runs first after another), median of ``--repeats`` runs after ``--warmup``:

* ``ort forward``: onnxruntime on the original model (the unit of the ratios);
* ``lrp_onnx <composite>``: ``Explainer(model, composite).explain(x)`` (one session.run);
* ``zennit <composite>``: zennit 0.5.1's ``Gradient`` with the same composite and its canonizer
  (VGG: SequentialMergeBatchNorm, ResNet: ResNetCanonizer);
* ``tutorial loop`` (VGG-16): the LRP overview's per-layer PyTorch procedure (Montavon et al.
  2019, section 10.2.2 and the tutorial's VGG-16 code: gamma / 0.25-rms epsilon / LRP-0, z^B);
* ``captum LRP``: captum's ``LRP`` (its default epsilon rules).

Peak memory is measured in a fresh subprocess per contender (VmHWM after setup and two runs:
the whole process, Python and libraries included; Linux). Usage::

    python benchmarks/bench.py                     # everything (about 20 minutes on 2 cores)
    python benchmarks/bench.py --quick             # VGG-16, batch 1, no memory probes
    python benchmarks/bench.py --models vgg16 --batches 1 8 --repeats 7 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = ("vgg16", "resnet50")
COMPOSITES = ("epsilon_gamma_box", "epsilon_plus_flat")
#: zennit's canonizer per model, as (module, class): ResNetCanonizer lives in zennit.torchvision.
CANONIZERS = {"vgg16": ("zennit.canonizers", "SequentialMergeBatchNorm"), "resnet50": ("zennit.torchvision", "ResNetCanonizer")}
IMAGE = (3, 224, 224)
PROBING = "--memory-probe" in sys.argv   # a peak-memory subprocess builds only what it runs


def torch_model(name: str):
    """torchvision ``name`` with seeded random weights (torch.manual_seed(0)), eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


def export(name: str, folder: str) -> str:
    """The ONNX export of ``torch_model(name)`` (dynamic batch, opset 17), cached in ``folder``."""
    from exporters.pytorch import export_module
    import torch

    path = os.path.join(folder, f"{name}.onnx")
    if not os.path.exists(path):
        export_module(torch_model(name), torch.randn(1, *IMAGE), path)
    return path


def images(batch: int) -> np.ndarray:
    """ImageNet-normalised images with pixels uniform in [0, 1] (seeded)."""
    from lrp_onnx.composites import IMAGENET_MEAN, IMAGENET_STD

    pixels = np.random.default_rng(0).uniform(0, 1, size=(batch,) + IMAGE).astype(np.float32)
    mean, std = (np.reshape(np.float32(v), (1, 3, 1, 1)) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (pixels - mean) / std


# --- contenders: each setup returns (run, build info) -------------------------------------------

def setup_forward(model, onnx_path, x):
    import onnxruntime as ort

    start = time.perf_counter()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    info = {"session_s": time.perf_counter() - start}
    name = session.get_inputs()[0].name
    return (lambda: session.run(None, {name: x})), info


def setup_lrp_onnx(composite):
    def setup(model, onnx_path, x):
        import lrp_onnx
        from lrp_onnx.compile import compile_explainer, prepare
        from lrp_onnx.explainer import create_session

        info = {}
        if not PROBING:   # the stages one by one (graph build = prepare + compile), then the Explainer
            start = time.perf_counter()
            prepared = prepare(onnx_path)
            compiled = compile_explainer(prepared, composite)
            built = time.perf_counter()
            session = create_session(compiled.model, ["CPUExecutionProvider"])
            info = {"graph_build_s": built - start, "session_s": time.perf_counter() - built}
            del prepared, compiled, session
        start = time.perf_counter()
        explainer = lrp_onnx.Explainer(onnx_path, composite=composite, providers=["CPUExecutionProvider"])
        info["explainer_init_s"] = time.perf_counter() - start
        return (lambda: explainer.explain(x)), info
    return setup


def _zennit_composite(name, model_name, x):
    import importlib

    import torch
    from zennit import composites
    from lrp_onnx.composites import IMAGENET_HIGH, IMAGENET_LOW

    module, cls = CANONIZERS[model_name]
    canonizer = [getattr(importlib.import_module(module), cls)()]
    if name == "epsilon_gamma_box":
        low = torch.tensor(IMAGENET_LOW).view(1, 3, 1, 1).expand_as(x)
        high = torch.tensor(IMAGENET_HIGH).view(1, 3, 1, 1).expand_as(x)
        return composites.EpsilonGammaBox(low=low, high=high, canonizers=canonizer)
    return composites.EpsilonPlusFlat(canonizers=canonizer)


def setup_zennit(composite):
    def setup(model, onnx_path, x):
        import torch
        from zennit.attribution import Gradient

        xt = torch.from_numpy(x)

        def initial(out):   # R at the output: output * one_hot(predicted class), as lrp_onnx
            return out * torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

        def run():
            # a fresh composite per call: the canonizers edit the model only inside the context
            with Gradient(model=model, composite=_zennit_composite(composite, model_name(model), xt)) as attributor:
                return attributor(xt, initial)
        return run, {}
    return setup


def model_name(model) -> str:
    return "resnet50" if hasattr(model, "layer1") else "vgg16"


def tutorial_loop(torch, layers, x):
    """The tutorial's VGG-16 procedure (Montavon et al. 2019, section 10.2.2) in float32 on a
    batch: forward storing activations, then per layer z = incr(rho-layer(a)), s = R/z,
    c = grad((z*s).sum(), a), R = a*c; layer 0 by z^B with the ImageNet bounds."""
    from lrp_onnx.composites import IMAGENET_HIGH, IMAGENET_LOW

    nn = torch.nn
    activations = [x]
    with torch.no_grad():
        for layer in layers:
            activations.append(layer(activations[-1]))
    logits = activations[-1]
    target = logits.flatten(1).argmax(1)
    relevance = logits * nn.functional.one_hot(target, logits.shape[1]).view_as(logits)

    def modified(layer, rho):   # the tutorial's newlayer: rho on weight and bias
        if isinstance(layer, nn.Conv2d):
            w, b = rho(layer.weight), rho(layer.bias)
            return lambda a: nn.functional.conv2d(a, w, b, layer.stride, layer.padding)
        return nn.functional.avg_pool2d if isinstance(layer, nn.MaxPool2d) else layer

    for index in range(len(layers) - 1, 0, -1):
        layer = layers[index]
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            continue
        if index <= 16:
            rho, incr = (lambda p: p + 0.25 * p.clamp(min=0)), (lambda z: z + 1e-9)
        elif index <= 30:
            rho, incr = (lambda p: p), (lambda z: z + 1e-9 + 0.25 * ((z ** 2).mean() ** .5).data)
        else:
            rho, incr = (lambda p: p), (lambda z: z + 1e-9)
        a = activations[index].detach().requires_grad_(True)
        f = modified(layer, rho)
        z = incr(f(a, 2) if f is nn.functional.avg_pool2d else f(a))
        s = (relevance / z).detach()
        (z * s).sum().backward()
        relevance = (a * a.grad).detach()
    a = activations[0].detach().requires_grad_(True)
    low = torch.tensor(IMAGENET_LOW).view(1, 3, 1, 1).expand_as(a).clone().requires_grad_(True)
    high = torch.tensor(IMAGENET_HIGH).view(1, 3, 1, 1).expand_as(a).clone().requires_grad_(True)
    first = layers[0]
    z = first(a) + 1e-9
    z = z - modified(first, lambda p: p.clamp(min=0))(low) - modified(first, lambda p: p.clamp(max=0))(high)
    ((z * (relevance / z).detach()).sum()).backward()
    return (a * a.grad + low * low.grad + high * high.grad).detach()


def setup_tutorial(model, onnx_path, x):
    """The tutorial's layer list: features + the classifier as convolutions (its toconv)."""
    import torch

    if model_name(model) != "vgg16":
        raise NotImplementedError("the tutorial's loop is written for VGG-16")
    nn = torch.nn
    layers, first = list(model.features), True
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            k = 7 if first else 1
            first = False
            conv = nn.utils.skip_init(nn.Conv2d, layer.in_features // (k * k), layer.out_features, k)
            with torch.no_grad():
                conv.weight.copy_(layer.weight.reshape(conv.weight.shape))
                conv.bias.copy_(layer.bias)
            layers.append(conv.requires_grad_(False))
        elif not isinstance(layer, nn.Dropout):
            layers.append(layer)
    layers = [nn.ReLU() if isinstance(layer, nn.ReLU) else layer for layer in layers]   # not in place
    xt = torch.from_numpy(x)
    return (lambda: tutorial_loop(torch, layers, xt)), {}


def setup_captum(model, onnx_path, x):
    import torch
    from captum.attr import LRP

    xt = torch.from_numpy(x)
    with torch.no_grad():
        target = model(xt).argmax(1)
    for module in model.modules():   # captum's LRP needs out-of-place ReLUs
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    lrp = LRP(model)
    return (lambda: lrp.attribute(xt, target=target)), {}


CONTENDERS: Dict[str, Callable] = {
    "ort forward": setup_forward,
    **{f"lrp_onnx {c}": setup_lrp_onnx(c) for c in COMPOSITES},
    **{f"zennit {c}": setup_zennit(c) for c in COMPOSITES},
    "tutorial loop": setup_tutorial,
    "captum LRP": setup_captum,
}
TORCH_CONTENDERS = [k for k in CONTENDERS if not k.startswith(("ort", "lrp_onnx"))]


def _setup(key, name, onnx_path, x, model=None):
    if key in TORCH_CONTENDERS and model is None:
        model = torch_model(name)
    return CONTENDERS[key](model, onnx_path, x)


# --- measurement ----------------------------------------------------------------------------------

def measure(name: str, batch: int, onnx_path: str, contenders: List[str], warmup: int, repeats: int) -> List[dict]:
    """Median times of ``contenders`` on one model and batch, alternated round by round."""
    x = images(batch)
    model = torch_model(name) if any(k in TORCH_CONTENDERS for k in contenders) else None
    rows: Dict[str, dict] = {}
    runs: Dict[str, Callable] = {}
    for key in contenders:
        row = rows[key] = {"model": name, "batch": batch, "contender": key, "status": "ok"}
        try:
            runs[key], info = _setup(key, name, onnx_path, x, model)
            row.update(info)
            runs[key]()    # a first call: errors surface here, not in the timed rounds
        except Exception as error:   # a contender that cannot run this model is reported, not fatal
            row["status"] = f"{'unsupported' if isinstance(error, NotImplementedError) or 'Unsupported' in type(error).__name__ else 'error'}: {type(error).__name__}: {str(error)[:300]}"
            runs.pop(key, None)
            print(f"  {name} b{batch} {key}: {row['status']}", file=sys.stderr)
    times: Dict[str, List[float]] = {k: [] for k in runs}
    keys = list(runs)
    for round_ in range(warmup + repeats):
        shift = round_ % max(1, len(keys))
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            runs[key]()
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
    for key, values in times.items():
        rows[key].update(median_s=float(np.median(values)), min_s=float(np.min(values)), runs=len(values))
    forward = rows.get("ort forward", {}).get("median_s")
    for key, row in rows.items():
        if "median_s" in row and forward:
            row["x_forward"] = row["median_s"] / forward
        if key.startswith("zennit "):
            ours = rows.get("lrp_onnx " + key.split(" ", 1)[1], {}).get("median_s")
            if ours and "median_s" in row:
                row["zennit_over_lrp_onnx"] = row["median_s"] / ours
    return list(rows.values())


def memory_probe(key: str, name: str, batch: int, onnx_path: str) -> dict:
    """In this (fresh) process: set up ``key``, run it twice, return the peak RSS (VmHWM: unlike
    ru_maxrss, which Linux carries over from the parent through fork and exec)."""
    run, _ = _setup(key, name, onnx_path, images(batch))
    run()
    run()
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return {"peak_rss_mb": peak_kb / 1024}


def peak_memory(key: str, name: str, batch: int, onnx_path: str) -> Optional[float]:
    command = [sys.executable, os.path.abspath(__file__), "--memory-probe", key, "--models", name,
               "--batches", str(batch), "--onnx", onnx_path]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


# --- report ---------------------------------------------------------------------------------------

def machine() -> dict:
    import onnxruntime
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def table(rows: List[dict]) -> str:
    """A Markdown table of the rows."""
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    lines = ["| model | batch | contender | median s | x forward | zennit / lrp_onnx | peak MB | graph build s | session s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['batch']} | {r['contender']} | {r['status'].split(':')[0]} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['contender']} | {fmt(r.get('median_s'), '.3f')} | "
            f"{fmt(r.get('x_forward'), '.2f')} | {fmt(r.get('zennit_over_lrp_onnx'), '.1f')} | "
            f"{fmt(r.get('peak_rss_mb'), '.0f')} | {fmt(r.get('graph_build_s'), '.2f')} | {fmt(r.get('session_s'), '.2f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--quick", action="store_true", help="VGG-16, batch 1, no memory probes")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the machine as JSON")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lrp_onnx_bench"),
                        help="folder for the ONNX exports")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.models[0], args.batches[0], args.onnx)))
        return 0
    if args.quick:
        args.models, args.batches, args.no_memory = ["vgg16"], [1], True
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    os.makedirs(args.cache, exist_ok=True)

    rows = []
    for name in args.models:
        onnx_path = export(name, args.cache)
        for batch in args.batches:
            print(f"{name}, batch {batch} ...", file=sys.stderr)
            measured = measure(name, batch, onnx_path, args.contenders, args.warmup, args.repeats)
            if not args.no_memory:
                for row in measured:
                    if row["status"] == "ok":
                        row["peak_rss_mb"] = peak_memory(row["contender"], name, batch, onnx_path)
            rows.extend(measured)
            print(table(measured), file=sys.stderr)   # each block as soon as it is measured
    info = machine()
    print(f"\n{info['cpus']} CPUs, {info['platform']}, onnxruntime {info['onnxruntime']}, torch {info['torch']} "
          f"({info['torch_threads']} threads); medians of {args.repeats} runs after {args.warmup} warm-up, alternated\n")
    print(table(rows))
    for row in rows:
        if row["status"] != "ok":
            print(f"\n{row['model']} batch {row['batch']} {row['contender']}: {row['status']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(args).items() if k not in ("memory_probe", "onnx")},
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
