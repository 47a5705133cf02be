"""The ``tutorial_vgg16`` composite against an independent re-implementation of the LRP
tutorial's VGG-16 loop (Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview",
and its tutorial code), run in PyTorch on the same torchvision VGG-16.

The oracle below follows the tutorial's code line by line:

* ``layers = features + toconv(classifier)``: the first Linear becomes a 7x7 convolution on the
  512x7x7 map, the others 1x1 convolutions (exactly equal to flattening then Linear);
  torchvision's ``avgpool`` (AdaptiveAvgPool2d(7), the identity on 7x7 maps) is skipped as in
  the tutorial (the engine gives it LRP-0 with +1e-9, which is the identity as well);
* MaxPool is replaced by AvgPool2d(2) on the way back;
* layers 1-16: gamma rule (rho = p + 0.25 p+ on weight and bias, z + 1e-9);
  layers 17-30: epsilon = 1e-9 + 0.25 * rms(z) (rms over the whole tensor, hence one image
  per oracle run so that it equals the engine's per-sample rms); layers >= 31: LRP-0 (z + 1e-9);
* layer 0: z^B with the bias kept and per-channel ImageNet bounds.

The oracle runs in float64 (a double copy of the layers), the engine in float32; the engine
explains both images in ONE batch, so this also checks that the per-sample rms keeps samples
independent. Relevance is compared at the input and at the inputs of the tutorial's layers
31, 21, 11 and 1, each within the float32 envelope below (per image).
"""
import copy

import numpy as np
import pytest

import lrp_onnx
from lrp_onnx.composites import IMAGENET_HIGH, IMAGENET_LOW
from tolerances import float32_tolerance, within_envelope

#: Tolerance (tests/tolerances.py), per image and compared layer: max|engine - oracle64| <=
#: K * max|oracle32 - oracle64| + 8 * 2^-24 * max|oracle64| * sqrt(DEPTH), K = 4, where
#: oracle32 is the same oracle run in float32 on the float32 model: it measures what float32
#: rounding does to this computation through 16 layers (no fixed constant holds on every CPU).
#: The tutorial's rules are continuous in the activations (MaxPool read as AvgPool), so there
#: is no tie sensitivity and the max norm is well-conditioned. Observed on an AMD EPYC (AVX2,
#: 2 cores; pytest -s tests/test_tutorial_vgg16.py): error / tolerance <= 0.14 (input relevance
#: 0.12 / 0.14 per image, R[31..1] 0.05 to 0.11, logits 0.04); the oracle's own float32 error
#: is 3e-6 to 6e-6 of the scale, the engine's 0.5e-6 to 2.4e-6.
#: Getting a rule wrong costs far more (gamma 0.2 instead of 0.25: 3e-2 of the scale, rejected
#: by test_the_tolerance_rejects_a_wrong_gamma; epsilon 0.2*rms instead of 0.25*rms: 0.3;
#: winner-take-all MaxPool: 1.3).
DEPTH = 16

#: tutorial layer index -> ONNX node whose INPUT tensor carries R[index]
#: (R[l] is the relevance at the input of the tutorial's layer l).
COMPARED = {
    31: "/avgpool/AveragePool",          # = output of features.30 (MaxPool), shape (N, 512, 7, 7)
    21: "/features/features.21/Conv",    # = output of features.20 (ReLU)
    11: "/features/features.11/Relu",    # = output of features.10 (Conv)
    1: "/features/features.1/Relu",      # = output of features.0 (Conv)
}


def _toconv(torch, classifier, dtype=None):
    """The tutorial's utils.toconv: Linear -> Conv2d (7x7 for the first, 1x1 for the rest), in
    float64 (or ``dtype``); other modules (ReLU, Dropout) are kept."""
    dtype = dtype or torch.float64
    nn = torch.nn
    out = []
    first = True
    for layer in classifier:
        if isinstance(layer, nn.Linear):
            k = 7 if first else 1
            first = False
            # skip_init: no random initialisation of a 100M-parameter kernel that is overwritten
            conv = torch.nn.utils.skip_init(nn.Conv2d, layer.in_features // (k * k), layer.out_features, k,
                                            dtype=dtype)
            with torch.no_grad():
                conv.weight.copy_(layer.weight.detach().reshape(conv.weight.shape))
                conv.bias.copy_(layer.bias.detach())
            out.append(conv.requires_grad_(False))
        else:
            out.append(layer)
    return out


def _newlayer(torch, layer, g):
    """The tutorial's newlayer: the layer with rho applied to its weight AND bias (pooling
    layers have no parameters and are returned unchanged). Written functionally instead of
    deep-copying the layer, which is the same computation."""
    if isinstance(layer, torch.nn.Conv2d):
        return _ModifiedConv(torch, layer, g(layer.weight), g(layer.bias))
    return layer


class _ModifiedConv:
    def __init__(self, torch, layer, weight, bias):
        self.F, self.layer, self.weight, self.bias = torch.nn.functional, layer, weight, bias

    def forward(self, a):
        l = self.layer
        return self.F.conv2d(a, self.weight, self.bias, l.stride, l.padding, l.dilation, l.groups)


def tutorial_lrp(torch, features, classifier, x, target, low, high, dtype=None, gamma=0.25):
    """The tutorial's VGG-16 LRP loop on ONE image x (1, 3, 224, 224), float64 (or ``dtype``,
    the layers' dtype; float32 for the tolerance's envelope); ``gamma``: the tutorial's 0.25
    (another value for the wrong variant). Returns (logits, R) with R[l] the relevance at the
    input of layer l (R[0]: pixels)."""
    nn = torch.nn
    dtype = dtype or torch.float64
    layers = list(features) + classifier
    L = len(layers)
    X = torch.as_tensor(x, dtype=dtype)
    A = [X] + [None] * L
    with torch.no_grad():
        for l in range(L):
            A[l + 1] = layers[l].forward(A[l])
    logits = A[-1].reshape(-1)

    T = torch.zeros_like(A[-1])
    T[0, target, 0, 0] = 1.0
    R = [None] * L + [(A[-1] * T).data]
    for l in range(1, L)[::-1]:
        A[l] = A[l].data.requires_grad_(True)
        if isinstance(layers[l], nn.MaxPool2d):
            layers[l] = nn.AvgPool2d(2)
        if isinstance(layers[l], (nn.Conv2d, nn.AvgPool2d)):
            if l <= 16:
                rho = lambda p: p + gamma * p.clamp(min=0)
                incr = lambda z: z + 1e-9
            if 17 <= l <= 30:
                rho = lambda p: p
                incr = lambda z: z + 1e-9 + 0.25 * ((z ** 2).mean() ** .5).data
            if l >= 31:
                rho = lambda p: p
                incr = lambda z: z + 1e-9
            z = incr(_newlayer(torch, layers[l], rho).forward(A[l]))
            s = (R[l + 1] / z).data
            (z * s).sum().backward()
            c = A[l].grad
            R[l] = (A[l] * c).data
        else:
            R[l] = R[l + 1]

    # the input layer: z^B with the bias (it cancels: b - b+ - b- = 0, as in the tutorial's code)
    A[0] = A[0].data.requires_grad_(True)
    lb = (torch.tensor(low, dtype=dtype).view(1, 3, 1, 1).expand_as(A[0])).clone().requires_grad_(True)
    hb = (torch.tensor(high, dtype=dtype).view(1, 3, 1, 1).expand_as(A[0])).clone().requires_grad_(True)
    z = layers[0].forward(A[0]) + 1e-9
    z = z - _newlayer(torch, layers[0], lambda p: p.clamp(min=0)).forward(lb)
    z = z - _newlayer(torch, layers[0], lambda p: p.clamp(max=0)).forward(hb)
    s = (R[1] / z).data
    (z * s).sum().backward()
    R[0] = (A[0] * A[0].grad + lb * lb.grad + hb * hb.grad).data
    return logits.numpy(), [None if r is None else r.numpy() for r in R]


@pytest.fixture(scope="module")
def tutorial_case(vgg16, vgg16_input):
    """(engine Explanation with the compared layers, oracle R per image (float64), targets,
    tensor names, the oracle's float32 R per image, the float64 layers)."""
    torch = pytest.importorskip("torch", reason="the tutorial oracle needs the torch extra")
    onnx = pytest.importorskip("onnx")
    model, path = vgg16
    x = vgg16_input

    graph = onnx.load(path).graph
    inputs_of = {node.name: node.input[0] for node in graph.node}
    tensors = {l: inputs_of[name] for l, name in COMPARED.items()}

    with torch.no_grad():
        target = model(torch.from_numpy(x)).argmax(dim=1).numpy()   # the predicted classes

    explainer = lrp_onnx.Explainer(path, composite="tutorial_vgg16")
    assert set(tensors.values()) <= set(explainer.layer_names)
    result = explainer.explain(x, target=target, layers=tuple(tensors.values()))

    # float64 copies: the features (15M parameters) and the classifier as convolutions
    # (parameters without requires_grad: the oracle only needs gradients w.r.t. activations)
    features = copy.deepcopy(model.features).double().eval().requires_grad_(False)
    classifier = _toconv(torch, model.classifier)
    references = []
    for i in range(len(x)):
        # the oracle replaces MaxPool layers in its list: give it a fresh list each time
        logits, R = tutorial_lrp(torch, list(features), list(classifier), x[i:i + 1], int(target[i]),
                                 IMAGENET_LOW, IMAGENET_HIGH)
        references.append((logits, R))
    # the same oracle in float32 on the float32 model: the envelope of float32 rounding
    features32 = copy.deepcopy(model.features).float().eval().requires_grad_(False)
    classifier32 = _toconv(torch, model.classifier, torch.float32)
    references32 = [tutorial_lrp(torch, list(features32), list(classifier32), x[i:i + 1], int(target[i]),
                                 IMAGENET_LOW, IMAGENET_HIGH, dtype=torch.float32) for i in range(len(x))]
    return result, references, target, tensors, references32, (features32, classifier32)


def test_targets_and_logits(tutorial_case):
    result, references, target, _, references32, _ = tutorial_case
    np.testing.assert_array_equal(result.target, target)
    for i, (logits, _) in enumerate(references):
        assert within_envelope(result.output[i], references32[i][0], logits, DEPTH, f"image {i}: logits") <= 1


def test_input_relevance_matches_tutorial(tutorial_case):
    result, references, _, _, references32, _ = tutorial_case
    assert result.relevance.shape == (len(references), 3, 224, 224)
    for i, (_, R) in enumerate(references):
        got = result.relevance[i:i + 1]
        assert np.any(got != 0), "the engine's input relevance is all zero"
        assert within_envelope(got, references32[i][1][0], R[0], DEPTH, f"image {i}: input relevance") <= 1


def test_the_tolerance_rejects_a_wrong_gamma(tutorial_case, vgg16_input):
    """The oracle with gamma 0.2 instead of 0.25 on layers 1-16 (image 0): the engine's input
    relevance is outside the envelope (observed error / tolerance: 1.7e3)."""
    import torch

    result, references, target, _, references32, (features32, classifier32) = tutorial_case
    # the wrong oracle in float32 (cheaper): its own rounding (<= the envelope, 1e-5 of the
    # scale) is negligible against the difference under test (3e-2)
    _, wrong = tutorial_lrp(torch, list(features32), list(classifier32), vgg16_input[:1], int(target[0]),
                            IMAGENET_LOW, IMAGENET_HIGH, dtype=torch.float32, gamma=0.2)
    # the envelope: float32 rounding of the same computation, measured on the right oracle's
    # float32 and float64 runs, independently of the difference under test
    tolerance = float32_tolerance(references32[0][1][0], references[0][1][0], DEPTH)
    ratio = float(np.abs(result.relevance[:1].astype(np.float64) - wrong[0]).max()) / tolerance
    print(f"\n  image 0 against gamma 0.2: error / tolerance = {ratio:.3g}")
    assert ratio > 1


@pytest.mark.parametrize("layer", sorted(COMPARED, reverse=True))
def test_layer_relevance_matches_tutorial(tutorial_case, layer):
    result, references, _, tensors, references32, _ = tutorial_case
    got_all = result.layers[tensors[layer]]
    for i, (_, R) in enumerate(references):
        got = got_all[i:i + 1]
        assert got.shape == R[layer].shape
        assert np.any(got != 0), f"the engine's relevance at {tensors[layer]} is all zero"
        assert within_envelope(got, references32[i][1][layer], R[layer], DEPTH, f"image {i}: R[{layer}] at {tensors[layer]}") <= 1


def test_conservation_through_lrp0_top(tutorial_case):
    """Sanity check of the oracle itself: the classifier uses LRP-0 with zero biases
    (torchvision's init), so sum R[31] equals the explained logit up to the 1e-9 terms."""
    result, references, target, _, _, _ = tutorial_case
    for i, (logits, R) in enumerate(references):
        total = logits[target[i]]
        # float64 sums of 25088 terms (<= 25088 * 2^-53 = 3e-12 relative) and the 1e-9 terms: 1e-6 is loose
        assert abs(R[31].sum() - total) <= 1e-6 * max(abs(total), 1e-12)
