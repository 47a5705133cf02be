"""The torchvision CNN zoo that lrp_onnx must explain out of the box, with seeded random
weights whose BatchNorm statistics are calibrated, so that activations have the scale of a
trained network instead of vanishing or exploding layer after layer (no weights can be
downloaded here).

    python -m exporters.zoo resnet50 -o resnet50.onnx [--size 224] [--seed 0]
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


def zoo_module(name: str, seed: int = 0, size: int = None):
    """torchvision's ``name`` in eval mode: torch.manual_seed(seed) random weights, then every
    BatchNorm's running mean/variance re-estimated (cumulative average) from forward passes on
    seeded N(0, 1) images of ``size`` (default ``ZOO[name]``), with only the BatchNorms in train
    mode (dropout and stochastic depth as at inference). Inception/GoogLeNet are built without
    their auxiliary classifiers, which inference never runs."""
    import torch
    import torchvision

    if name not in ZOO:
        raise ValueError(f"{name!r} is not in the zoo; choose from {', '.join(ZOO)}")
    torch.manual_seed(seed)
    options = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    module = torchvision.models.get_model(name, weights=None, **options).eval()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    if norms:
        size = size or ZOO[name]
        with torch.no_grad():
            for _ in range(3):
                module(torch.randn(8, 3, size, size))
    return module.eval()


def export_zoo_model(name: str, path, size: int = None, seed: int = 0):
    """Export ``zoo_module(name, seed)`` at ``path`` for (N, 3, size, size) inputs (default: the
    smallest size it supports), checked against torch by ``export_module``; returns (the
    exported module, the path), so that a caller can compare against that very module."""
    import torch

    size = size or ZOO[name]
    module = zoo_module(name, seed, size)
    torch.manual_seed(seed)
    example = torch.randn(1, 3, size, size)
    write_atomically(path, lambda tmp: export_module(module, example, tmp))
    return module, os.fspath(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(ZOO))
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(export_zoo_model(args.name, args.output, args.size, args.seed)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
