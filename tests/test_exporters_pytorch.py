"""exporters.pytorch: onnxruntime against torch on VGG-16, ResNet-18 and the digits CNN; clear
errors for an unknown name and weights files that do not fit."""
import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch exporter needs the torch extra")
torchvision = pytest.importorskip("torchvision", reason="the PyTorch exporter needs the torch extra")

from exporters import ExportError  # noqa: E402
from exporters.digits import digits_28x28, digits_cnn  # noqa: E402
from exporters.pytorch import export_module, export_torchvision, main  # noqa: E402
from tolerances import module_depth, torch_float64, within_envelope  # noqa: E402


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _ratio(got, module, x, label):
    """onnxruntime's ``got`` against ``module`` on ``x`` with the float32 envelope of
    tests/tolerances.py (the check export_module runs): max|ort - torch64| over
    (4 * max|torch32 - torch64| + 8 * 2^-24 * scale * sqrt(depth)); <= 1 passes.
    Observed on an AMD EPYC (AVX2, 2 cores; pytest -s): VGG-16 0.053, ResNet-18 0.11, digits CNN
    0.16; VGG-16 with its last ReLU dropped: 5e4 (rejected)."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ref32 = module(xt).numpy()
    ref64 = torch_float64(module, xt)
    assert np.abs(ref64).max() > 0
    return within_envelope(got, ref32, ref64, module_depth(module), label)


def _assert_close(got, module, x, label=""):
    assert _ratio(got, module, x, label) <= 1


def test_vgg16(vgg16, vgg16_input):
    """The session's VGG-16 export (conftest), on a batch of two (the batch axis is dynamic)."""
    module, path = vgg16
    _assert_close(_run(path, vgg16_input), module, vgg16_input, "vgg16")


def test_the_tolerance_rejects_a_wrong_vgg16(vgg16, vgg16_input):
    """The same comparison against VGG-16 with its last ReLU dropped (classifier.4 -> Identity)
    fails: a real change of the function (observed error / tolerance: 5e4)."""
    import copy

    module, path = vgg16
    wrong = copy.deepcopy(module)
    wrong.classifier[4] = torch.nn.Identity()
    assert _ratio(_run(path, vgg16_input), wrong, vgg16_input, "vgg16 without its last ReLU") > 1


def test_export_check_rejects_an_export_that_differs(tmp_path):
    """export_module's own check fails on a real error: a module whose traced graph adds 1e-3
    of the output's scale that eager torch does not (the check's tolerance here: ~1e-6)."""
    class Shifted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 4)

        def forward(self, x):
            y = self.linear(x)
            return y + 1e-3 * y.abs().max() if torch.onnx.is_in_onnx_export() else y

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="more than the float32 tolerance"):
        export_module(Shifted(), torch.randn(2, 16), tmp_path / "shifted.onnx")
    assert not (tmp_path / "shifted.onnx").exists()


def test_resnet18_by_name_with_its_own_weights_file(tmp_path):
    """A state_dict file is loaded (its weights, not the seeded ones, are exported)."""
    torch.manual_seed(5)
    source = torchvision.models.resnet18().eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights)
    path = tmp_path / "resnet18.onnx"
    assert main(["resnet18", "-o", str(path), "--weights", str(weights), "--size", "96"]) == 0
    x = np.random.default_rng(0).normal(size=(3, 3, 96, 96)).astype(np.float32)
    _assert_close(_run(path, x), source, x, "resnet18")


def test_random_weights_are_seeded(tmp_path):
    a, b, c = (export_torchvision("squeezenet1_1", tmp_path / f"{n}.onnx", size=64, seed=s) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(a, x), _run(b, x))
    assert not np.allclose(_run(a, x), _run(c, x))


def test_digits_cnn(tmp_path):
    torch.manual_seed(0)
    module = digits_cnn().eval()
    x = digits_28x28()[0][:16].reshape(-1, 1, 28, 28)
    path = export_module(module, torch.from_numpy(x[:1]), tmp_path / "cnn.onnx")
    _assert_close(_run(path, x), module, x, "digits cnn")


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def _expect_error(tmp_path, capsys, args, message):
    out = tmp_path / "out.onnx"
    assert main(args + ["-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not out.exists()


def test_unknown_name(tmp_path, capsys):
    _expect_error(tmp_path, capsys, ["resnet81"], "unknown torchvision classifier 'resnet81'; did you mean resnet18")


def test_weights_that_do_not_fit(tmp_path, capsys, resnet18_state):
    state = dict(resnet18_state)
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    _expect_error(tmp_path, capsys, ["resnet18", "--weights", str(path)],
                  "does not fit torchvision's resnet18: 1 missing key(s) (fc.bias), 1 unexpected key(s) (extra.weight), "
                  "1 shape mismatch(es) (fc.weight: file (10, 512), model (1000, 512))")


def test_weights_of_another_model(tmp_path, capsys, resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    _expect_error(tmp_path, capsys, ["squeezenet1_1", "--weights", str(path)],
                  "does not fit torchvision's squeezenet1_1: 52 missing key(s) (features.0.weight, features.0.bias, "
                  "features.3.squeeze.weight, ...), 122 unexpected key(s) (conv1.weight, bn1.weight, bn1.bias, ...)")


@pytest.mark.parametrize("content, message", [
    (b"not a torch file", "is not a torch weights file"),
    ("tensor", "holds a Tensor, not a state_dict"),
])
def test_not_a_weights_file(tmp_path, capsys, content, message):
    path = tmp_path / "weights.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    _expect_error(tmp_path, capsys, ["resnet18", "--weights", str(path)], message)
    _expect_error(tmp_path, capsys, ["resnet18", "--weights", str(tmp_path / "none.pth")], "weights file not found")


def test_input_too_small(tmp_path):
    with pytest.raises(ExportError, match=r"squeezenet1_1 cannot run on a \(1, 3, 16, 16\) input: .*too small"):
        export_torchvision("squeezenet1_1", tmp_path / "v.onnx", size=16)
