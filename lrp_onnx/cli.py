"""The ``lrp-onnx`` command line: demo, explain, compile, inspect, evaluate.

Errors of the user's making (files, models, inputs, targets, composites) exit with code 2 and
one line; anything else with code 1 and one line; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .errors import InputError, LRPError

EXIT_USAGE = 2
EXIT_BUG = 1

#: More inputs than this get a progress bar on stderr.
PROGRESS_ABOVE = 4

#: How relevance passes through nodes that take no rule, by family (ops.family_of).
HANDLING = {
    "activation": "pass",
    "shape": "pass (inverse shape op)",
    "merge": "split back to the inputs",
    "scale": "pass (a gate gets none)",
    "maxpool": "winner-take-all",
    "select": "to the selected branch (none to the condition)",
    "embedding": "relevance sink (token relevance)",
}

#: The rule column of a node that stops compiling, by Blocker.kind.
BLOCKED = {
    "no handler": "UNSUPPORTED (no relevance handler)",
    "no gradient": "UNSUPPORTED (no gradient)",
    "refused": "REFUSED (see below)",
}


def _compile(args):
    from .compile import compile_explainer

    compiled = compile_explainer(args.model, args.composite, args.maxpool)
    compiled.save(args.output)
    print(f"wrote {args.output}: inputs {', '.join(repr(i.name) for i in compiled.inputs)} and 'lrp_target_mask', "
          f"{len(compiled.rules)} layers with rules")


def _shape(mg, tensor) -> str:
    dims = mg.shapes.get(tensor)
    return "?" if dims is None else "(" + ", ".join(str(d) if d else "?" for d in dims) + ")"


def _inspect(args) -> int:
    """The relevance-carrying nodes with op, output shape and rule, then every problem that
    stops compiling with the composite (the same walk: compile.assess), one line per kind with
    what to do. Works on models that cannot be compiled; exit code 1 when one cannot."""
    from . import ops
    from .checks import summary
    from .compile import assess, prepare
    from .composites import resolve_composite
    from .ops.registry import key_name, op_key

    composite = resolve_composite(args.composite)
    mode = args.maxpool or composite.maxpool
    prepared = prepare(args.model)
    mg, sub = prepared.graph, prepared.subgraph
    assessment = assess(prepared, composite, args.maxpool)
    blocked = {b.node: b for b in assessment.blockers if b.node}
    table = [("node", "op", "output shape", "rule")]
    for name in sub.nodes:
        node = mg.nodes[name]
        if name in blocked:
            rule = BLOCKED[blocked[name].kind]
        elif name in assessment.rules:
            rule = str(assessment.rules[name])
        else:
            family = ops.family_of(mg, sub.tensors, node)
            rule = HANDLING.get(family, family)
        table.append((name, key_name(op_key(node)), _shape(mg, node.output[0]), rule))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    print(f"{len(sub.nodes)} nodes carry relevance, {len(assessment.rules)} take a rule of composite "
          f"{composite.name!r} (MaxPool: {mode})")
    if assessment.blockers:
        print(f"the model cannot be explained with {composite.name!r}:")
        for line in summary(assessment.blockers):
            print(f"  - {line}")
        return 1
    return 0


def _demo(args):
    from .demo import run_digits, run_text, run_vgg16

    if args.which == "vgg16":
        run_vgg16(args.out, args.weights)
    elif args.weights:
        raise InputError("--weights is for `lrp-onnx demo vgg16`")
    elif args.which == "text":
        run_text(args.out)
    else:
        run_digits(args.out)


def _target(text: str):
    """--target: "pred" or a class index."""
    if text == "pred":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--target must be 'pred' or a class index, got {text!r}") from None


def _explain_target(args):
    """explain's target: --target; --target-region CLASS:Y0:Y1:X0:X1 (a box of a segmentation
    output); --target-mask FILE.npy with --target K: an (H, W) region of class K, alone: a mask
    shaped like one output, for every input (lrp_onnx/targets.py)."""
    from .targets import RegionTarget, parse_region

    if args.target_region is not None:
        if args.target_mask is not None or args.target is not None:
            raise InputError("--target-region gives the class and the region: use it without --target and --target-mask")
        return parse_region(args.target_region)
    if args.target_mask is None:
        return args.target
    mask = _load_npy(args.target_mask)
    if args.target is None:
        return mask
    if mask.ndim != 2:
        raise InputError(f"--target-mask with --target: {args.target_mask} must be an (H, W) region of the output's "
                         f"pixels for every input, got shape {mask.shape}")
    return RegionTarget(args.target, mask)


def _batch_target(target, n: int):
    """``target`` for a batch of n inputs: one output's mask (an array) repeated n times."""
    return np.broadcast_to(target, (n,) + target.shape) if isinstance(target, np.ndarray) else target


def _headline(res, i: int, target) -> str:
    """Sample i's predicted class, score and target; for a region or mask target the explained
    score sum(output * mask) instead."""
    from .targets import RegionTarget

    if isinstance(target, RegionTarget):
        return f"class {target.class_index} over the region (score {res.total[i]:.4g})"
    if isinstance(target, np.ndarray):
        return f"target mask (score {res.total[i]:.4g})"
    scores = res.output[i].reshape(-1)
    predicted = int(scores.argmax())
    return f"predicted {predicted} (score {scores[predicted]:.4g}), target {int(res.target[i])}"


def _load_npy(path: str) -> np.ndarray:
    """The array in the .npy file ``path``; InputError if it is missing or not a plain array."""
    if not os.path.isfile(path):
        raise InputError(f"input file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{path} is not a numeric .npy array ({exc})") from None


def _read_inputs(paths, model_shape, spec):
    """[(name, sample, display RGB or None, layout, size)] for every input file; .npy files
    hold one sample or a batch, images are preprocessed. Everything is checked here, before
    anything is explained or written."""
    from .images import fit, load_image

    items, fitted = [], None
    expected = tuple(d if d else "?" for d in model_shape[1:])
    for path in paths:
        stem = Path(path).stem
        if path.lower().endswith(".npy"):
            array = _load_npy(path)
            if array.dtype.kind not in "fiu":
                raise InputError(f"{path} has dtype {array.dtype}; the model takes float32 numbers")
            samples = [array] if array.ndim == len(expected) else list(array) if array.ndim == len(expected) + 1 else None
            if samples is None:
                raise InputError(f"{path} has shape {array.shape}; the model takes samples of shape "
                                 f"{expected} (or a batch of them)")
            names = [stem] if len(samples) == 1 and array.ndim == len(expected) else [f"{stem}_{i}" for i in range(len(samples))]
            items += [(n, s.astype(np.float32), None, "auto", None) for n, s in zip(names, samples)]
        else:
            fitted = fitted or fit(spec, model_shape)
            sample, display = load_image(path, spec, fitted)
            items.append((stem, sample, display, fitted.layout, fitted.size))
    for name, sample, *_ in items:
        wrong = [a for a, (got, want) in enumerate(zip(sample.shape, expected)) if isinstance(want, int) and got != want]
        if sample.ndim != len(expected) or wrong:
            raise InputError(f"input {name!r} has shape {sample.shape}; the model takes samples of shape {expected}")
    seen = {}
    for i, (name, *rest) in enumerate(items):   # unique output names
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            items[i] = (f"{name}_{seen[name]}", *rest)
    return items


def _model_input_shape(explainer):
    graph = explainer.forward_model.graph
    info = next(i for i in graph.input if i.name == explainer.compiled.input_name)
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)


def _progress(done: int, total: int):
    width = 30
    filled = width * done // total
    print(f"\rexplaining [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="" if done < total else "\n",
          file=sys.stderr, flush=True)


def _figure(sample, relevance, display, layout, size, cmap):
    """[input, heatmap, overlay] side by side, scaled up to about 224 pixels."""
    from .images import relevance_map
    from .render import colorize, gray, grid, overlay

    heat = relevance_map(relevance, layout, size)
    if display is None:
        shown = relevance_map(sample, layout, size)
        display = gray(shown, shown.min(), shown.max() if shown.max() > shown.min() else shown.min() + 1)
    return grid([[_enlarge(display), _enlarge(colorize(heat, cmap)), _enlarge(overlay(display, heat, cmap))]])


def _enlarge(rgb):
    """Scaled up by an integer factor to about 224 pixels; a one-row strip made 16 rows tall."""
    from .render import upscale

    big = upscale(rgb, max(1, 224 // max(rgb.shape[:2])))
    return np.repeat(big, 16, axis=0) if len(big) == 1 else big


def _save_npy(path, array):
    from .files import write_atomically

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    write_atomically(path, write)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_.") or "layer"


def _several_inputs(args, explainer, spec):
    """{input name: [(name, sample, display, layout, size)]} for a model with several inputs:
    every INPUT is NAME=FILE, one per model input (.npy keeps its dtype: token ids stay integers;
    an image is preprocessed to that input's shape)."""
    names = [i.name for i in explainer.compiled.inputs]
    wanted = ", ".join(f"{n}=FILE" for n in names)
    given = {}
    for item in args.inputs:
        name, sep, path = item.partition("=")
        if not sep or name not in names or name in given:
            raise InputError(f"the model has {len(names)} inputs: give each once as NAME=FILE ({wanted}); got {item!r}")
        given[name] = path
    if set(given) != set(names):
        raise InputError(f"the model has {len(names)} inputs: give each once as NAME=FILE ({wanted}); "
                         f"missing {', '.join(n for n in names if n not in given)}")
    read = {}
    for name, path in given.items():
        info = next(i for i in explainer.forward_model.graph.input if i.name == name)
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)
        if path.lower().endswith(".npy"):
            array = _load_npy(path)
            samples = [array] if array.ndim == len(shape) - 1 else list(array)
            stem = Path(path).stem
            read[name] = [(stem if len(samples) == 1 and array.ndim == len(shape) - 1 else f"{stem}_{i}", s, None, "auto", None)
                          for i, s in enumerate(samples)]
        else:
            read[name] = _read_inputs([path], shape, spec)
    counts = {name: len(items) for name, items in read.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"the inputs hold different numbers of samples: {counts}")
    return read


def _explain_several(args, explainer, spec, target):
    """Explain a model with several inputs (NAME=FILE each): per sample one line (predicted
    class, score, target, the relevance sum over all inputs), then each input's relevance:
    drawn for an image-shaped input (`<name>.<input>.png`), listed for the others."""
    from .images import relevance_map
    from .render import colorize, write_png

    read = _several_inputs(args, explainer, spec)
    names = list(read)
    samples = read[names[0]]
    os.makedirs(args.out, exist_ok=True)
    total = len(samples)
    for start in range(0, total, args.batch_size):
        stop = min(start + args.batch_size, total)
        feeds = {name: np.stack([item[1] for item in read[name][start:stop]]) for name in names}
        res = explainer.explain(feeds, target=_batch_target(target, stop - start), layers=args.layers)
        for i in range(stop - start):
            stem = samples[start + i][0]
            lines = []
            for source, relevance in res.sources.items():
                r = relevance[i]
                if source in read and r.ndim >= 2:
                    _, sample, display, layout, size = read[source][start + i]
                    png = os.path.join(args.out, f"{stem}.{_safe(source)}.png")
                    write_png(png, _figure(sample, r, display, layout, size, args.cmap))
                    lines.append(f"{stem} {source} relevance sum {float(r.sum(dtype=np.float64)):.4g} -> {png}")
                else:
                    lines.append(f"{stem} {source} relevance [{' '.join(f'{v:.6g}' for v in r.reshape(-1))}]")
                if args.save_npy:
                    _save_npy(os.path.join(args.out, f"{stem}.{_safe(source)}.relevance.npy"), r)
            for layer in args.layers:
                r = res.layers[layer][i]
                write_png(os.path.join(args.out, f"{stem}.{_safe(layer)}.png"), _enlarge(colorize(relevance_map(r), args.cmap)))
                if args.save_npy:
                    _save_npy(os.path.join(args.out, f"{stem}.{_safe(layer)}.npy"), r)
            summed = sum(float(r[i].sum(dtype=np.float64)) for r in res.sources.values())
            print(f"{stem}: {_headline(res, i, target)}, relevance sum {summed:.4g} over {len(res.sources)} inputs")
            for line in lines:
                print(line)
        if total > PROGRESS_ABOVE:
            _progress(stop, total)


def _text_lines(res, color: bool) -> str:
    """The tokens and their relevance (render.tokens_terminal) under one line of totals."""
    from .render import tokens_terminal

    return (f"relevance sum {res.relevance.sum():.4g} of {res.score:.4g} on the output\n"
            + tokens_terminal(res.tokens, res.relevance, color))


def _explain_text(args):
    """--text (and --text-pair) with --tokenizer: print each token with its relevance, write
    <out>/text.html and text.png (and with --save-npy text.relevance.npy); an embedding model
    with --text-pair: the cosine similarity explained both ways (text.explain_similarity)."""
    from . import text
    from .explainer import Explainer
    from .render import write_token_report

    if args.inputs:
        raise InputError(f"--text explains a text: give no INPUT files (got {' '.join(args.inputs)})")
    if not args.tokenizer:
        raise InputError("--text needs --tokenizer DIR (a folder with tokenizer.json, or the file)")
    if args.layers:
        raise InputError("--layers is for images and arrays, not --text")
    tokenizer = text.load_tokenizer(args.tokenizer)
    explainer = Explainer(args.model, composite=args.composite, providers=args.providers, maxpool=args.maxpool)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    if args.text_pair is not None and text.is_embedding_model(explainer):
        if args.target is not None:
            raise InputError("--target does not apply to a similarity: each text is explained with the other's "
                             "embedding as the target")
        sim = text.explain_similarity(explainer, tokenizer, args.text, args.text_pair, args.merge_words)
        results = {"text_a": sim.a, "text_b": sim.b}
        headings = {"text_a": f"A: {args.text!r} with B's embedding fixed",
                    "text_b": f"B: {args.text_pair!r} with A's embedding fixed"}
        title = f"cos(A, B) = {sim.score:.4f}"
    else:
        res = text.explain_text(explainer, tokenizer, args.text, args.text_pair, args.target, args.merge_words)
        results, title = {"text": res}, ""
        headings = {"text": repr(args.text) + (f" + {args.text_pair!r}" if args.text_pair is not None else "")
                    + f": {text.describe_target(res, tokenizer)}"}
    if title:
        print(title)
    for stem, res in results.items():
        print(headings[stem])
        print(_text_lines(res, color))
    page, png = write_token_report(args.out, "text", [(headings[k], r.tokens, r.relevance) for k, r in results.items()],
                                   title)
    written = [page, png]
    if args.save_npy:
        for key, res in results.items():
            written.append(os.path.join(args.out, f"{key}.relevance.npy"))
            _save_npy(written[-1], res.relevance)
    print(f"wrote {', '.join(written)}")


def _explain(args):
    import onnxruntime as ort

    from .explainer import Explainer
    from .images import preprocess_from, relevance_map
    from .render import colorize, write_png

    if args.text is not None and (args.target_region or args.target_mask):
        raise InputError("--target-region and --target-mask are for image and array inputs, not --text")
    if args.text is not None:
        return _explain_text(args)
    if args.text_pair is not None or args.tokenizer or args.merge_words:
        raise InputError("--text-pair, --tokenizer and --merge-words go with --text")
    if not args.inputs:
        raise InputError("explain needs INPUT files (images, .npy), or --text with --tokenizer")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.providers:
        missing = [p for p in args.providers if p not in ort.get_available_providers()]
        if missing:
            raise InputError(f"execution provider(s) {missing} not available; available: {ort.get_available_providers()}")
    spec = preprocess_from(args.preprocess)
    target = _explain_target(args)
    explainer = Explainer(args.model, composite=args.composite, providers=args.providers, maxpool=args.maxpool)
    if len(explainer.compiled.inputs) > 1:   # an image and a metadata vector, ...: NAME=FILE each
        return _explain_several(args, explainer, spec, target)
    items = _read_inputs(args.inputs, _model_input_shape(explainer), spec)
    os.makedirs(args.out, exist_ok=True)
    total = len(items)
    for start in range(0, total, args.batch_size):
        batch = items[start:start + args.batch_size]
        res = explainer.explain(np.stack([item[1] for item in batch]), target=_batch_target(target, len(batch)),
                                layers=args.layers)
        for i, (name, sample, display, layout, size) in enumerate(batch):
            png = os.path.join(args.out, f"{name}.png")
            write_png(png, _figure(sample, res.relevance[i], display, layout, size, args.cmap))
            if args.save_npy:
                _save_npy(os.path.join(args.out, f"{name}.relevance.npy"), res.relevance[i])
            for layer in args.layers:
                r = res.layers[layer][i]
                heat = relevance_map(r)
                write_png(os.path.join(args.out, f"{name}.{_safe(layer)}.png"), _enlarge(colorize(heat, args.cmap)))
                if args.save_npy:
                    _save_npy(os.path.join(args.out, f"{name}.{_safe(layer)}.npy"), r)
            print(f"{name}: {_headline(res, i, target)}, "
                  f"relevance sum {float(res.relevance[i].sum(dtype=np.float64)):.4g} -> {png}")
        if total > PROGRESS_ABOVE:
            _progress(min(start + args.batch_size, total), total)


def _load_data(path: str, targets):
    """DATA: an .npy of inputs, or an .npz with ``x`` and optionally ``target`` (or ``y``);
    ``targets``: None, 'pred' or an .npy of one class per sample (overrides the .npz's)."""
    def load(file):
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {file}: {exc}") from None

    data = load(path)
    target = None
    if isinstance(data, np.lib.npyio.NpzFile):
        if "x" not in data.files:
            raise InputError(f"{path}: an .npz needs an array 'x' (inputs), optionally 'target' or 'y'; has {data.files}")
        x = data["x"]
        target = data["target"] if "target" in data.files else (data["y"] if "y" in data.files else None)
    else:
        x = data
    if targets == "pred":
        target = None
    elif targets is not None:
        target = load(targets)
    if target is not None:
        target = np.asarray(target).reshape(-1)
        if target.dtype.kind == "f" and np.all(target == np.round(target)):
            target = target.astype(np.int64)
    return x, target


def _evaluate(args):
    from . import evaluate

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError("--methods is empty")
    x, target = _load_data(args.data, args.targets)
    perturbation = evaluate.Perturbation(
        patch=args.patch, steps=args.steps, per_step=args.per_step, replacement=args.replacement, value=args.value,
        low=args.low, high=args.high, sigma=args.sigma, seed=args.seed)
    try:
        image_shape = tuple(int(v) for v in args.image_shape.lower().split("x")) if args.image_shape else None
    except ValueError:
        raise InputError(f"--image-shape must be HxW, e.g. 28x28, got {args.image_shape!r}") from None
    results = evaluate.compare(args.model, x, methods, target=target, perturbation=perturbation, layout=args.layout,
                               image_shape=image_shape, normalize=args.normalize, batch_size=args.batch_size,
                               providers=args.providers)
    title = (f"{os.path.basename(args.model)}: {len(x)} inputs, {args.patch}x{args.patch} patches, {args.replacement}"
             + (f" {args.value:g}" if args.replacement == "constant" else ""))
    paths = evaluate.write_report(results, args.out, title)
    print(evaluate.table_markdown(results), end="")
    print(f"wrote {paths['plot']}, {paths['markdown']}, {paths['csv']}")


def parser() -> argparse.ArgumentParser:
    from .render import COLORMAPS

    top = argparse.ArgumentParser(prog="lrp-onnx", description="Layer-wise Relevance Propagation compiled into ONNX.")
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the tutorial's figures: digits (default) or vgg16; text: MiniLM similarity")
    demo.add_argument("which", nargs="?", choices=("digits", "vgg16", "text"), default="digits",
                      help="digits: models/digits_mlp.onnx on 12 digits; vgg16: VGG-16 on a photo; "
                           "text: the pretrained MiniLM's sentence similarity explained")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--weights", help="vgg16: a torchvision VGG-16 state dict (default: seeded random weights)")
    demo.set_defaults(run=_demo)

    def model_options(cmd):
        cmd.add_argument("model", help="an ONNX model file")
        cmd.add_argument("--composite", default="epsilon_gamma_box", help="preset name or JSON file (default: epsilon_gamma_box)")
        cmd.add_argument("--maxpool", choices=("winner", "avg"), default=None, help="override the composite's MaxPool mode")

    explain = sub.add_parser("explain", help="explain images or .npy arrays; write heatmap PNGs")
    model_options(explain)
    explain.add_argument("inputs", nargs="*", metavar="INPUT", help="PNG/JPEG images or .npy arrays (one sample or a batch); "
                         "NAME=FILE for each input of a model with several")
    explain.add_argument("--target", type=_target, default=None, help="class index to explain, or 'pred' (default)")
    explain.add_argument("--target-region", metavar="CLASS:Y0:Y1:X0:X1",
                         help="an (N, C, H, W) output: class CLASS over output rows Y0..Y1-1, columns X0..X1-1")
    explain.add_argument("--target-mask", metavar="FILE.npy", help="with --target K: an (H, W) region of class K; "
                         "alone: a mask shaped like one output (relevance at the output = output * mask)")
    explain.add_argument("--preprocess", default="none",
                         help="images: imagenet, mnist, none (default: [0, 1], the model's size) or a JSON file")
    explain.add_argument("--layers", nargs="+", default=[], metavar="NAME", help="tensors whose relevance to draw too")
    explain.add_argument("--out", default="lrp_out", help="output folder (default: lrp_out)")
    explain.add_argument("--batch-size", type=int, default=16, help="inputs per onnxruntime run (default: 16)")
    explain.add_argument("--providers", nargs="+", metavar="PROVIDER", help="onnxruntime execution providers")
    explain.add_argument("--save-npy", action="store_true", help="also write the relevance as .npy")
    explain.add_argument("--cmap", choices=COLORMAPS, default="tutorial", help="heatmap colours (default: tutorial)")
    explain.add_argument("--text", help="a text to explain (a token model; needs --tokenizer)")
    explain.add_argument("--text-pair", help="a second text: a pair for a classifier, a similarity for an embedding model")
    explain.add_argument("--tokenizer", metavar="DIR", help="a folder with tokenizer.json (Hugging Face tokenizers)")
    explain.add_argument("--merge-words", action="store_true", help="--text: sum word pieces into words")
    explain.set_defaults(run=_explain)

    compile_ = sub.add_parser("compile", help="write the standalone explainer ONNX model")
    model_options(compile_)
    compile_.add_argument("-o", "--output", required=True, help="where to write the explainer")
    compile_.set_defaults(run=_compile)

    inspect = sub.add_parser("inspect", help="list the nodes that carry relevance, their rules, unsupported ops")
    model_options(inspect)
    inspect.set_defaults(run=_inspect)

    evaluate = sub.add_parser("evaluate", help="explanation quality by pixel flipping: curves PNG, AUC/ABPC tables")
    evaluate.add_argument("model", help="an ONNX model file (the original model scores the perturbed inputs)")
    evaluate.add_argument("data", help="an .npy of inputs (N, ...), or an .npz with 'x' and optionally 'target' or 'y'")
    evaluate.add_argument("--methods", default="epsilon_gamma_box,epsilon_plus_flat,gradient_x_input,random",
                          help="comma-separated composites (presets, JSON files), gradient, gradient_x_input, random")
    evaluate.add_argument("--targets", help="an .npy of one class per sample, or 'pred' (default: the .npz's, else pred)")
    evaluate.add_argument("--patch", type=int, default=4, help="patch side in pixels (default: 4)")
    evaluate.add_argument("--steps", type=int, default=16, help="perturbation steps (default: 16)")
    evaluate.add_argument("--per-step", type=int, default=None, help="patches per step (default: all patches over the steps)")
    evaluate.add_argument("--replacement", choices=("constant", "uniform", "blur"), default="uniform",
                          help="what a replaced pixel becomes (default: uniform noise in the data's range)")
    evaluate.add_argument("--value", type=float, default=0.0, help="constant replacement value (default: 0)")
    evaluate.add_argument("--low", type=float, default=None, help="uniform noise low (default: the data's min)")
    evaluate.add_argument("--high", type=float, default=None, help="uniform noise high (default: the data's max)")
    evaluate.add_argument("--sigma", type=float, default=2.0, help="blur standard deviation in pixels (default: 2)")
    evaluate.add_argument("--seed", type=int, default=0, help="noise, tie-breaking and random baseline seed")
    evaluate.add_argument("--layout", choices=("NCHW", "NHWC", "NHW", "flat"), default=None,
                          help="input layout (default: guessed from the shape)")
    evaluate.add_argument("--image-shape", help="flat inputs: HxW (default: square)")
    evaluate.add_argument("--normalize", action="store_true", help="divide each curve by the unperturbed score")
    evaluate.add_argument("--batch-size", type=int, default=2048, help="perturbed inputs per onnxruntime run (default: 2048)")
    evaluate.add_argument("--providers", nargs="+", metavar="PROVIDER", help="onnxruntime execution providers")
    evaluate.add_argument("--out", default="quality_out", help="output folder (default: quality_out)")
    evaluate.set_defaults(run=_evaluate)

    def _audit(args):
        from .audit.cli import run_cli

        run_cli(args)

    audit = sub.add_parser("audit", help="explain a dataset, find strategy clusters (SpRAy), write a report")
    model_options(audit)   # a model to compile with --composite, or a saved explainer
    audit.add_argument("data", help="an image folder (one subfolder per class), an .npz with 'x' (and 'y'), "
                                    "or a .parquet file with an image column")
    audit.add_argument("--out", required=True, help="output folder; a rerun into it resumes")
    audit.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray (Ray Data)")
    audit.add_argument("--address", help="ray: the cluster to join (default: start a local one)")
    audit.add_argument("--workers", type=int, help="ray: actors, one onnxruntime session each (default: CPUs or GPUs)")
    audit.add_argument("--batch-size", type=int, default=64, help="samples per batch and commit (default: 64)")
    audit.add_argument("--preprocess", default="none", help="images: imagenet, mnist, none (default) or a JSON file")
    audit.add_argument("--target", choices=("pred", "label"), default="pred",
                       help="explain the predicted class (default) or the label where known")
    audit.add_argument("--float16", action="store_true", help="store the relevance as float16")
    audit.add_argument("--providers", nargs="+", metavar="PROVIDER", help="onnxruntime execution providers")
    audit.add_argument("--image-column", help="parquet: the column of image bytes (default: found by name or type)")
    audit.add_argument("--label-column", help="parquet: the label column (default: label, y, target, ... if present)")
    audit.add_argument("--max-clusters", type=int, default=8, help="SpRAy: most clusters per class (default: 8)")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar")
    audit.set_defaults(run=_audit)

    def _web(args):
        from .web import cli

        cli(args)

    web = sub.add_parser("web", help="the browser page (web/) with an explainer, served on localhost")
    model_options(web)   # an explainer, or a model to compile first with --composite
    web.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000; 0: a free one)")
    web.add_argument("--preprocess", default="none",
                     help="the page's default for images: imagenet, mnist, none (default) or a JSON file")
    web.add_argument("--export", metavar="DIR", help="write the static page and the explainer into DIR instead of serving")
    web.set_defaults(run=_web)
    return top


def _one_line(exc: Exception) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (LRPError, OSError) as exc:
        if args.debug:
            raise
        print(f"lrp-onnx: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:   # a bug or a runtime failure: still one line, unless --debug
        if args.debug:
            raise
        print(f"lrp-onnx: internal error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
