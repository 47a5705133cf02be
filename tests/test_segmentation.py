"""Segmentation: a class over a region of an (N, C, H, W) output (lrp_onnx/targets.py).

torchvision's fcn_resnet50, deeplabv3_mobilenet_v3_large and lraspp_mobilenet_v3_large
(exporters.zoo.SEGMENTATION: seeded random weights, calibrated BatchNorm, 64x64, the "out" head)
explain class 15 over a box with both default composites: finite relevance, the explainer's
output equal to the export's forward, and the relevance that enters the final Resize equal to
sum(output * mask) up to that layer's epsilon. timm's hrnet_w18_small (a classifier) explains
a class. A tiny inline segmentation net (Conv, ReLU, strided Conv, 1x1 head, Resize up, no
biases) with LRP-0 against torch autograd: LRP-0 of a bias-free ReLU network is gradient x
input, so it conserves sum(output * mask) exactly.
"""
import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx.rules import Epsilon
from lrp_onnx.targets import RegionTarget
from tolerances import EPS32, float32_tolerance, module_depth, shallow_bound, torch_float64, within_envelope

torch = pytest.importorskip("torch", reason="the segmentation networks need the torch extra")
pytest.importorskip("torchvision", reason="the segmentation networks need the torch extra")
from exporters.zoo import SEGMENTATION, TIMM, export_zoo_model  # noqa: E402

#: VOC's "person" over a box of the 64x64 output: rows 16..47, columns 8..39.
CLASS, BOX = 15, (16, 48, 8, 40)
LRP0_ALL = {"rules": [{"where": "all", "rule": {"rule": "LRP0"}}]}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """export(name) -> (the exported module, its .onnx path), once per name."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = export_zoo_model(name, tmp_path_factory.mktemp(name) / f"{name}.onnx", seed=0)
        return cache[name]

    return get


def _references(module, x):
    """(torch's float32 output, the float64 deep copy's output) on ``x``."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return module(xt).numpy(), torch_float64(module, xt)


def _last_node(ex):
    """The node of the canonical forward that writes the model's output."""
    graph = ex.forward_model.graph
    return next(node for node in graph.node if graph.output[0].name in node.output)


#: The composites each network is compiled with: epsilon_plus_flat, and the default
#: epsilon_gamma_box on the smallest (each compile takes 7 to 16 s on this loaded 2-core machine).
COMPOSITES = {name: ("epsilon_plus_flat", "epsilon_gamma_box") if name == "lraspp_mobilenet_v3_large"
              else ("epsilon_plus_flat",) for name in SEGMENTATION}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "fcn_resnet50" else n
                                  for n in SEGMENTATION])
def test_a_class_over_a_region_of_a_segmentation_network(export, name):
    module, path = export(name)
    size = SEGMENTATION[name]
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    forward = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    ref32, ref64 = _references(module, x)
    depth = module_depth(module)
    assert forward.shape == (2, 21, size, size)
    assert within_envelope(forward, ref32, ref64, depth, f"{name} export") <= 1
    target = RegionTarget(CLASS, BOX)
    mask = target.mask(forward.shape)
    pixels = float(mask[0].sum())
    score64 = (ref64 * mask).sum(axis=(1, 2, 3))
    for composite in COMPOSITES[name]:
        ex = lrp_onnx.Explainer(path, composite)
        last = _last_node(ex)
        assert last.op_type == "Resize"   # the head's logits upsampled to the input's size
        res = ex.explain(x, target=target, layers=[last.input[0]])
        assert res.relevance.shape == x.shape
        assert np.isfinite(res.relevance).all(), f"{name} {composite}: relevance is not finite"
        assert np.abs(res.relevance).max() > 0, f"{name} {composite}: relevance is all zero"
        np.testing.assert_array_equal(res.target, [CLASS, CLASS])
        assert within_envelope(res.output, ref32, ref64, depth, f"{name} {composite} output") <= 1
        # the relevance put on the output, sum(y * mask), against the float64 module's: each of the
        # region's pixels is off by at most the float32 tolerance of the output
        assert np.abs(res.total - score64).max() <= pixels * float32_tolerance(ref32, ref64, depth)
        # the final Resize has no bias, so its epsilon rule passes on sum(z s) = sum(y m |y| / (|y| + eps)):
        # at most eps per region pixel lost; float32: s = R / stab(z) and the product (3 roundings), then
        # A_h^T s A_w (two dot products over the output's rows and columns)
        rule = ex.rules[last.name]
        assert isinstance(rule, Epsilon)
        entering = res.layers[last.input[0]]
        assert not entering[:, np.arange(21) != CLASS].any(), "relevance reached another class's logits"
        magnitude = np.abs(res.output.astype(np.float64) * mask).sum(axis=(1, 2, 3))
        bound = rule.epsilon * pixels + (3 + 2 * size) * EPS32 * magnitude
        error = np.abs(entering.sum(axis=(1, 2, 3), dtype=np.float64) - res.total)
        print(f"\n  {name} {composite}: score {np.round(res.total, 4)}, at the Resize input off by {error} "
              f"(bound {bound}), sum(R_in)/R_out = {np.round(res.conservation, 3)}")
        assert (error <= bound).all()


@pytest.mark.slow
def test_hrnet_w18_small_explains_a_class_and_refuses_a_region(export):
    """timm's HRNet classifier (epsilon_plus_flat): its multi-resolution fusion upsamples with
    Resize (nearest, constant scales); an (N, 1000) output has no region to explain."""
    pytest.importorskip("timm", reason="hrnet_w18_small needs the timm extra")
    name = "hrnet_w18_small"
    module, path = export(name)
    size = TIMM[name]
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    ref32, ref64 = _references(module, x)
    ex = lrp_onnx.Explainer(path, "epsilon_plus_flat")
    assert sum(node.op_type == "Resize" for node in ex.forward_model.graph.node) > 0
    res = ex.explain(x, target=7)
    assert np.isfinite(res.relevance).all() and np.abs(res.relevance).max() > 0
    assert within_envelope(res.output, ref32, ref64, module_depth(module), f"{name} output") <= 1
    print(f"\n  {name}: sum(R_in)/R_out = {np.round(res.conservation, 3)}")
    with pytest.raises(lrp_onnx.InputError, match=r"needs a segmentation output \(N, C, H, W\)"):
        ex.explain(x, target=RegionTarget(7, BOX))


#: The tiny net: x (N, 3, 16, 16) -> Conv 3x3 (3 -> 4) -> Relu -> Conv 3x3 stride 2 (4 -> 6) -> Relu
#: -> Conv 1x1 (6 -> 3 classes) -> Resize to 16x16; no biases.
TINY = {name: np.random.default_rng(3).normal(size=shape).astype(np.float32)
        for name, shape in (("w1", (4, 3, 3, 3)), ("w2", (6, 4, 3, 3)), ("w3", (3, 6, 1, 1)))}


def tiny_segmenter(mode):
    """``mode`` "linear": sizes computed from Shape as torch writes interpolate(size=x.shape[-2:])
    (Slice(Shape(y), 0, 2) ++ (16, 16)), pytorch_half_pixel; "nearest": constant scales 2, as
    torch's interpolate(scale_factor=2) (asymmetric, floor)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["a2"]),
             helper.make_node("Conv", ["a2", "w3"], ["y"], name="head")]
    inits = [numpy_helper.from_array(v, k) for k, v in TINY.items()]
    if mode == "linear":
        nodes += [helper.make_node("Shape", ["y"], ["shape"]),
                  helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
                  helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
                  helper.make_node("Resize", ["y", "", "", "sizes"], ["out"], name="up", mode="linear",
                                   coordinate_transformation_mode="pytorch_half_pixel")]
        inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("zero", [0]), ("two", [2]),
                                                                                 ("hw", [16, 16]))]
    else:
        nodes.append(helper.make_node("Resize", ["y", "", "scales"], ["out"], name="up", mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    graph = helper.make_graph(nodes, "tiny_segmenter",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _gradient_x_input(x, mode, mask):
    """(output, x * d sum(output * mask) / dx) of the tiny net in float64 (torch autograd)."""
    f = torch.nn.functional
    w = {k: torch.from_numpy(v).double() for k, v in TINY.items()}
    xt = torch.from_numpy(x).double().requires_grad_()
    y = f.conv2d(f.relu(f.conv2d(f.relu(f.conv2d(xt, w["w1"], padding=1)), w["w2"], stride=2, padding=1)), w["w3"])
    out = (f.interpolate(y, size=(16, 16), mode="bilinear", align_corners=False) if mode == "linear"
           else f.interpolate(y, scale_factor=2, mode="nearest"))
    (grad,) = torch.autograd.grad((out * torch.from_numpy(mask).double()).sum(), xt)
    return out.detach().numpy(), (xt * grad).detach().numpy()


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_lrp0_on_a_tiny_segmentation_net_is_gradient_x_input_and_conserves(mode):
    x = np.random.default_rng(4).normal(size=(2, 3, 16, 16)).astype(np.float32)
    region = np.zeros((2, 16, 16), bool)
    region[0, 2:9, 3:14] = True
    region[1, 10:16, 0:5] = True
    target = RegionTarget(1, region)
    mask = target.mask((2, 3, 16, 16))
    out64, expected = _gradient_x_input(x, mode, mask)
    res = lrp_onnx.Explainer(tiny_segmenter(mode), LRP0_ALL).explain(x, target=target)
    np.testing.assert_array_equal(res.target, [1, 1])
    # depth 4 (three Convs and the Resize), fan-in at most 36 (the strided Conv: 4 channels x 3 x 3)
    scale = float(np.abs(out64).max())
    assert np.abs(res.output - out64).max() <= shallow_bound(4, 36, scale)
    assert np.abs(res.relevance - expected).max() <= shallow_bound(4, 36, float(np.abs(expected).max()))
    score = (out64 * mask).sum(axis=(1, 2, 3))
    summed = res.relevance.sum(axis=(1, 2, 3), dtype=np.float64)
    print(f"\n  tiny {mode}: sum(R_in) = {summed}, sum(output * mask) = {score}")
    # conservation: each input element is within the bound above, the score within its pixels' output bound
    per_input = shallow_bound(4, 36, float(np.abs(expected).max()))
    assert np.abs(summed - score).max() <= x[0].size * per_input + mask[0].sum() * shallow_bound(4, 36, scale)
    assert np.abs(res.total - score).max() <= mask[0].sum() * shallow_bound(4, 36, scale)


#: The trained toy segmenter's scenes: 32x32, dark noise, 9x9 squares, red (class 1) or blue (class 2).
SCENE, RED, BLUE = 32, (0.9, 0.2, 0.2), (0.2, 0.3, 0.9)


def _scene(rng, squares):
    """(image (3, 32, 32) in [0, 1], labels (32, 32)) with ``squares`` [(class, centre row, centre col)]."""
    image = rng.uniform(0.0, 0.3, size=(3, SCENE, SCENE)).astype(np.float32)
    labels = np.zeros((SCENE, SCENE), np.int64)
    for cls, y, x in squares:
        image[:, y - 4:y + 5, x - 4:x + 5] = np.add(RED if cls == 1 else BLUE, rng.uniform(-0.1, 0.1, 3))[:, None, None]
        labels[y - 4:y + 5, x - 4:x + 5] = cls
    return image, labels


class ToySegmenter(torch.nn.Module):
    """Conv 3x3 (3 -> 8) - ReLU - Conv 3x3 stride 2 (8 -> 16) - ReLU - Conv 1x1 (16 -> 3) - bilinear
    upsampling to the input's size (interpolate(size=x.shape[-2:]), as torchvision's heads)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(16, 3, 1)

    def forward(self, x):
        y = self.head(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _trained_segmenter():
    """ToySegmenter trained (seeded, 150 Adam steps, about 2 s) on 256 scenes of one red and two
    blue squares at random places; pixel accuracy on held-out scenes is returned with it."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    scenes = [_scene(rng, [(c, *rng.integers(4, SCENE - 4, size=2)) for c in (1, 2, 2)]) for _ in range(288)]
    x = torch.from_numpy(np.stack([s[0] for s in scenes]))
    y = torch.from_numpy(np.stack([s[1] for s in scenes]))
    net = ToySegmenter()
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        batch = torch.from_numpy(rng.integers(0, 256, 16))
        loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x[256:]).argmax(1) == y[256:]).double().mean())
    return net, accuracy


def test_a_region_target_explains_the_object_in_the_region_only(tmp_path):
    """A trained toy segmenter on a scene with two blue squares (class 2) and a red one: class 2
    over a box around the first blue square puts its relevance on that square, none on the
    other (outside the box's receptive field the relevance is exactly zero); class 2 over its
    predicted mask lights both. LRP_ONNX_SEGMENTATION_FIGURE=PATH draws the figure
    (input | class map with the box | heatmap; second row: the mask), README's
    docs/segmentation_region.png."""
    from lrp_onnx.render import channel_sum, grid, tutorial_heatmap, write_png
    from exporters.pytorch import export_module

    net, accuracy = _trained_segmenter()
    assert accuracy > 0.95, f"the toy segmenter did not learn its scenes (pixel accuracy {accuracy:.3f})"
    image, labels = _scene(np.random.default_rng(1), [(2, 8, 8), (2, 24, 22), (1, 7, 24)])
    x = image[None]
    path = export_module(net, torch.from_numpy(x), tmp_path / "toy.onnx", output_name="out")
    ex = lrp_onnx.Explainer(path, {"preset": "epsilon_gamma_box", "low": 0, "high": 1})
    box = (2, 15, 2, 15)
    first, second = labels == 2, labels == 2
    first[16:], second[:16] = False, False
    res = ex.explain(x, target=RegionTarget(2, box))
    predicted = res.output[0].argmax(0)
    by_mask = ex.explain(x, target=RegionTarget(2, predicted == 2))
    heat, heat_mask = channel_sum(res.relevance[0]), channel_sum(by_mask.relevance[0])
    # receptive field of output rows < 15: bilinear reads feature rows <= 7, the strided Conv input
    # rows <= 15, the first Conv input rows <= 16: nothing beyond the box plus 3 pixels
    assert not heat[box[1] + 3:].any() and not heat[:, box[3] + 3:].any()
    positive, positive_mask = np.maximum(heat, 0), np.maximum(heat_mask, 0)
    share = positive[first].sum() / positive.sum()
    shares = [positive_mask[m].sum() / positive_mask.sum() for m in (first, second)]
    print(f"\n  toy segmenter: pixel accuracy {accuracy:.3f}; box: {share:.3f} of R+ on the boxed square; "
          f"mask: {shares[0]:.3f} / {shares[1]:.3f} on the two squares; sum(R_in)/R_out {res.conservation[0]:.3f} "
          f"(box), {by_mask.conservation[0]:.3f} (mask)")
    assert share > 0.9
    assert min(shares) > 0.3
    figure = os.environ.get("LRP_ONNX_SEGMENTATION_FIGURE")
    if figure:
        palette = np.array([[0.15, 0.15, 0.15], RED, BLUE])
        boxed, masked = palette[predicted], palette[predicted]
        y0, y1, x0, x1 = box
        boxed[y0:y1, [x0, x1 - 1]] = boxed[[y0, y1 - 1], x0:x1] = 1.0   # the region's outline in white
        region, padded = predicted == 2, np.pad(predicted == 2, 1)
        inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        masked[region & ~inside] = 1.0   # the mask's outline in white
        rgb = image.transpose(1, 2, 0)
        write_png(figure, grid([[rgb, boxed, tutorial_heatmap(heat)], [rgb, masked, tutorial_heatmap(heat_mask)]],
                               scale=6))
