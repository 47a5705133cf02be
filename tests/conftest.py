"""Shared fixtures: models exported once per test session."""
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


@pytest.fixture(scope="session")
def vgg16(tmp_path_factory):
    """torchvision vgg16 with seeded random weights (torch.manual_seed(0)), eval mode, and its
    ONNX export (dynamic batch, opset 17): (torch module, path)."""
    torch = pytest.importorskip("torch", reason="the VGG-16 oracles need the torch extra")
    torchvision = pytest.importorskip("torchvision", reason="the VGG-16 oracles need the torch extra")
    from exporters.pytorch import export_module

    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    path = tmp_path_factory.mktemp("vgg16") / "vgg16.onnx"
    export_module(model, torch.randn(1, 3, 224, 224), path)
    return model, str(path)


@pytest.fixture(scope="session")
def vgg16_input():
    """Two ImageNet-normalised images with pixels in [0, 1] (seeded), shape (2, 3, 224, 224)."""
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, size=(2, 3, 224, 224)).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    return (pixels - mean) / std


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory):
    """Factory: ``zoo_export(name)`` -> (torch module, onnx path) for a model of
    ``exporters.zoo.ZOO``: ``zoo_module(name)`` (seed 0, BatchNorm calibrated at ``ZOO[name]``,
    eval mode) and its export by ``export_zoo_model`` at that size (dynamic batch). Built once
    per name per session, whichever test asks first."""
    pytest.importorskip("torch", reason="the zoo models need the torch extra")
    pytest.importorskip("torchvision", reason="the zoo models need the torch extra")
    import exporters.zoo as zoo

    cache = {}

    def get(name):
        if name not in cache:
            # the module export_zoo_model exported: the file and the module cannot drift apart,
            # and the BatchNorm calibration (seconds for vgg16_bn) runs once
            cache[name] = zoo.export_zoo_model(name, tmp_path_factory.mktemp(name) / f"{name}.onnx", zoo.ZOO[name], seed=0)
        return cache[name]

    return get
