"""The torchvision CNN zoo that lrp_onnx must explain out of the box, with seeded random
weights whose BatchNorm statistics are calibrated, so that activations have the scale of a
trained network instead of vanishing or exploding layer after layer (no weights can be
downloaded here).

    python -m exporters.zoo resnet50 -o resnet50.onnx [--size 224] [--seed 0]

Beside the classifiers: torchvision's segmentation networks (SEGMENTATION; their forward
returns {"out": (N, 21, H, W), ...}: the export is "out", auxiliary heads off, no backbone
weights) and timm's HRNet classifier (TIMM; the timm extra), exported the same way.
"""
from __future__ import annotations

import argparse
import os
import sys

from lrp_onnx.files import write_atomically

from .pytorch import export_module

#: Model name -> the smallest input size (square) its torch.onnx export supports; 224 where an
#: AdaptiveAvgPool must divide the feature map (VGG, AlexNet), 75 for Inception-v3.
ZOO = {
    "resnet18": 64, "resnet50": 64, "resnext50_32x4d": 64, "wide_resnet50_2": 64, "vgg16_bn": 224,
    "alexnet": 224, "squeezenet1_1": 64, "densenet121": 64, "googlenet": 64, "inception_v3": 75,
    "mobilenet_v2": 64, "mobilenet_v3_small": 64, "mnasnet0_5": 64, "shufflenet_v2_x0_5": 64,
    "efficientnet_b0": 64, "efficientnet_v2_s": 64, "regnet_x_400mf": 64, "regnet_y_400mf": 64,
    "convnext_tiny": 64,
}
#: The size the zoo is explained at in the README's table (299 for Inception-v3).
FULL_SIZE = {name: 299 if name == "inception_v3" else 224 for name in ZOO}
#: torchvision segmentation networks -> the size of the tests (the output is (N, 21, H, W)).
SEGMENTATION = {"fcn_resnet50": 64, "deeplabv3_mobilenet_v3_large": 64, "lraspp_mobilenet_v3_large": 64}
#: timm classifiers -> the size of the tests.
TIMM = {"hrnet_w18_small": 64}
#: Every exportable name -> its default size.
SIZES = {**ZOO, **SEGMENTATION, **TIMM}


def _segmentation_out(module):
    """``module`` with its forward's dict reduced to the "out" tensor (an nn.Module, so that
    export_module and the float64 check see one output)."""
    import torch

    class SegmentationOut(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["out"]

    return SegmentationOut(module)


def _build(name: str):
    """The freshly initialized module ``name`` (random weights from torch's current seed)."""
    import torchvision

    if name in SEGMENTATION:
        options = {} if name.startswith("lraspp") else {"aux_loss": False}
        return _segmentation_out(torchvision.models.get_model(name, weights=None, weights_backbone=None, **options))
    if name in TIMM:
        import timm

        return timm.create_model(name, pretrained=False)
    options = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **options)


def zoo_module(name: str, seed: int = 0, size: int = None):
    """torchvision's ``name`` in eval mode: torch.manual_seed(seed) random weights, then every
    BatchNorm's running mean/variance re-estimated (cumulative average) from forward passes on
    seeded N(0, 1) images of ``size`` (default ``ZOO[name]``), with only the BatchNorms in train
    mode (dropout and stochastic depth as at inference). Inception/GoogLeNet are built without
    their auxiliary classifiers, which inference never runs; ``name`` may also be one of
    SEGMENTATION or TIMM."""
    import torch

    if name not in SIZES:
        raise ValueError(f"{name!r} is not in the zoo; choose from {', '.join(SIZES)}")
    torch.manual_seed(seed)
    module = _build(name).eval()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    if norms:
        size = size or SIZES[name]
        with torch.no_grad():
            for _ in range(3):
                module(torch.randn(8, 3, size, size))
    return module.eval()


def export_zoo_model(name: str, path, size: int = None, seed: int = 0):
    """Export ``zoo_module(name, seed)`` at ``path`` for (N, 3, size, size) inputs (default: the
    smallest size it supports), checked against torch by ``export_module``; returns (the
    exported module, the path), so that a caller can compare against that very module. The
    output is "logits", or "out" for SEGMENTATION."""
    import torch

    size = size or SIZES[name]
    module = zoo_module(name, seed, size)
    torch.manual_seed(seed)
    example = torch.randn(1, 3, size, size)
    output = "out" if name in SEGMENTATION else "logits"
    write_atomically(path, lambda tmp: export_module(module, example, tmp, output_name=output))
    return module, os.fspath(path)


# --- Transformers: the zoo of README "The transformer zoo" (benchmarks/transformer_zoo.py) ---

#: Vision transformer -> (where it comes from, the keyword arguments of its small variant: the same
#: architecture with fewer and narrower layers, for the tests at SMALL_VISION_SIZE).
VISION_TRANSFORMERS = {
    "vit_b_16": ("torchvision", dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)),
    "swin_t": ("torchvision", dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4])),
    "deit_tiny_patch16_224": ("timm", dict(img_size=32, depth=2)),
    "vit_small_patch16_224": ("timm", dict(img_size=32, depth=2)),
}
#: The image size of the small variants (swin: 8x8 patches, so shifted 4x4 windows with their masks).
SMALL_VISION_SIZE = 32


def vision_transformer_module(name: str, seed: int = 0, small: bool = False, num_classes: int = 10):
    """The vision transformer ``name`` (VISION_TRANSFORMERS) in eval mode with
    torch.manual_seed(seed) random weights: the real architecture (224x224, 1000 classes), or
    with ``small`` its small variant (SMALL_VISION_SIZE, ``num_classes``). torchvision's ViT
    head is zero-initialised (every logit 0): it is redrawn N(0, 0.02^2), timm's head init."""
    import torch

    if name not in VISION_TRANSFORMERS:
        raise ValueError(f"{name!r} is not a zoo vision transformer; choose from {', '.join(VISION_TRANSFORMERS)}")
    source, options = VISION_TRANSFORMERS[name]
    torch.manual_seed(seed)
    if source == "timm":
        import timm

        module = timm.create_model(name, pretrained=False, **(dict(options, num_classes=num_classes) if small else {}))
    elif not small:
        import torchvision

        module = torchvision.models.get_model(name, weights=None)
    elif name == "vit_b_16":
        from torchvision.models.vision_transformer import VisionTransformer

        module = VisionTransformer(num_classes=num_classes, **options)
    else:
        from torchvision.models.swin_transformer import SwinTransformer

        module = SwinTransformer(num_classes=num_classes, **options)
    if name == "vit_b_16":
        torch.nn.init.normal_(module.heads.head.weight, std=0.02)
    return module.eval()


def export_vision_transformer(name: str, path, seed: int = 0, small: bool = False):
    """Export ``vision_transformer_module(name, seed, small)`` at ``path`` (atomically) with
    ``export_module`` (TorchScript, opset 17, batch dynamic, checked against torch in float64),
    torch's fused attention fast path off (it has no ONNX export); returns (module, path)."""
    import torch

    module = vision_transformer_module(name, seed, small)
    size = SMALL_VISION_SIZE if small else 224
    torch.manual_seed(seed)
    example = torch.randn(1, 3, size, size)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        write_atomically(path, lambda tmp: export_module(module, example, tmp))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return module, os.fspath(path)


def flax_block(dim: int = 64, heads: int = 4, mlp: int = 128, classes: int = 10, seed: int = 0):
    """A pre-norm transformer block in flax.nnx, (N, T, dim) tokens -> (N, classes):
    x + MultiHeadAttention(LayerNorm(x)), then + Linear(gelu(Linear(LayerNorm(.)))), mean over
    the tokens, a Linear head. Weights from numpy's default_rng(seed) (flax's own initializers
    are jitted XLA programs whose compilation takes minutes on a loaded machine): kernels
    N(0, 1/fan-in), biases N(0, 0.1^2), LayerNorm scales U(0.5, 1.5)."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
            self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False, rngs=rngs)
            self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
            self.fc1 = nnx.Linear(dim, mlp, rngs=rngs)
            self.fc2 = nnx.Linear(mlp, dim, rngs=rngs)
            self.head = nnx.Linear(dim, classes, rngs=rngs)

        def __call__(self, x):
            x = x + self.attention(self.norm1(x))
            x = x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))
            return self.head(jnp.mean(x, axis=1))

    block = nnx.eval_shape(lambda: Block(nnx.Rngs(seed)))   # shapes only: every value is set below
    rng = np.random.default_rng(seed)
    for path, variable in nnx.iter_graph(block):
        if not isinstance(variable, nnx.Param):
            continue
        shape = variable.value.shape
        if path[-1] == "kernel":
            value = rng.normal(size=shape) / np.sqrt(mlp if path[0] == "fc2" else dim)
        elif path[-1] == "scale":
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(size=shape) * 0.1
        variable.value = jnp.asarray(value, jnp.float32)
    return block


def export_flax_block(path, tokens: int = 16, decomposed: bool = False, seed: int = 0, **sizes):
    """Export ``flax_block(seed=seed, **sizes)`` for (N, tokens, dim) inputs at ``path`` with
    ``exporters.jax.export_flax`` (jax2onnx, opset 23), LayerNorm native or ``decomposed``
    (jax2onnx's E[x^2] - E[x]^2 form with its Max guard); returns (module, path)."""
    import numpy as np

    from .jax import export_flax

    module = flax_block(seed=seed, **sizes)
    dim = module.norm1.num_features
    example = np.random.default_rng(seed).normal(size=(2, tokens, dim)).astype(np.float32)
    mode = "force_decomposed" if decomposed else "prefer_native"
    write_atomically(path, lambda tmp: export_flax(module, example, tmp, normalization=mode))
    return module, os.fspath(path)

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SIZES))
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(export_zoo_model(args.name, args.output, args.size, args.seed)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
