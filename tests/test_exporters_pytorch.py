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


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _assert_close(got, expected, rtol=1e-4):
    """float32 kernels sum in different orders: |ort - torch| <= rtol * max|torch|."""
    scale = np.abs(expected).max()
    assert scale > 0 and np.abs(got - expected).max() <= rtol * scale, np.abs(got - expected).max() / scale


def test_vgg16(vgg16, vgg16_input):
    """The session's VGG-16 export (conftest), on a batch of two (the batch axis is dynamic)."""
    module, path = vgg16
    with torch.no_grad():
        expected = module(torch.from_numpy(vgg16_input)).numpy()
    _assert_close(_run(path, vgg16_input), expected)


def test_resnet18_by_name_with_its_own_weights_file(tmp_path):
    """A state_dict file is loaded (its weights, not the seeded ones, are exported)."""
    torch.manual_seed(5)
    source = torchvision.models.resnet18().eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights)
    path = tmp_path / "resnet18.onnx"
    assert main(["resnet18", "-o", str(path), "--weights", str(weights), "--size", "96"]) == 0
    x = np.random.default_rng(0).normal(size=(3, 3, 96, 96)).astype(np.float32)
    with torch.no_grad():
        expected = source(torch.from_numpy(x)).numpy()
    _assert_close(_run(path, x), expected)


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
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    _assert_close(_run(path, x), expected)


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
