"""Hostile inputs end in a clear error or a correct result; concurrency, determinism, chunked
batches and models with external data.

Errors: every bad model is an ``lrp_onnx.ModelError``, every bad input or target an
``InputError``, and the message names the problem (checked with ``match``). Integer and
float64 inputs are cast to the model's float32 (documented in the README); NaN/Inf inputs are
errors. Results that must not depend on how they were computed (threads, processes, chunks,
external data) are compared bit for bit.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import lrp_onnx
from lrp_onnx import Composite, Family
from lrp_onnx import rules as R
from lrp_onnx.errors import InputError, ModelError
from test_rules import make_model, seeded, small_net

ALL_RULES = (R.LRP0(), R.Epsilon(), R.Epsilon(1e-6, relative=0.25), R.Gamma(), R.ZPlus(), R.AlphaBeta(),
             R.ZBox(-3.0, 3.0), R.Flat(), R.WSquare())


@pytest.fixture(scope="module")
def net():
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Relu -> Gemm, input (N, 3, 8, 8), 5 outputs."""
    return small_net(seeded(30))


@pytest.fixture(scope="module")
def net_file(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.onnx"
    onnx.save(net, path)
    return str(path)


@pytest.fixture(scope="module")
def explainer(net):
    return lrp_onnx.Explainer(net, composite="epsilon_gamma_box")


def images(n: int, seed: int = 0) -> np.ndarray:
    return seeded(seed).uniform(-1, 1, size=(n, 3, 8, 8)).astype(np.float32)


def same(a, b) -> None:
    """Bit-identical results."""
    assert a.relevance.tobytes() == b.relevance.tobytes() and a.output.tobytes() == b.output.tobytes()
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        assert a.layers[name].tobytes() == b.layers[name].tobytes(), name


# --------------------------------------------------------------------------- bad model files


@pytest.mark.parametrize("name,content,message", [
    ("truncated", lambda m: m[: len(m) // 3], r"truncated\.onnx is not a readable ONNX model"),
    ("corrupt", lambda m: bytes(b ^ 0x5A for b in m), r"corrupt\.onnx is not a readable ONNX model"),
    ("image", lambda m: b"\x89PNG\r\n\x1a\n" + bytes(range(256)), r"image\.onnx is not a readable ONNX model"),
    ("csv", lambda m: b"name,value\n1,2\n", r"csv\.onnx is not a readable ONNX model"),
    ("empty", lambda m: b"", "graph has no nodes"),
])
def test_unreadable_files_are_model_errors(net, tmp_path, name, content, message):
    """Truncated or corrupted protobuf, other formats, an empty file."""
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(content(net.SerializeToString()))
    with pytest.raises(ModelError, match=message):
        lrp_onnx.Explainer(path)


def test_a_directory_or_missing_path_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found.*it is a directory"):
        lrp_onnx.Explainer(tmp_path)
    with pytest.raises(ModelError, match="not found: .*nope.onnx"):
        lrp_onnx.Explainer(tmp_path / "nope.onnx")


def save_external(model, path) -> str:
    """Save with every tensor in ``<name>.data`` beside it (a copy: onnx moves the tensors of
    the proto it saves); returns the data file's path."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=0)
    return str(path) + ".data"


def test_missing_or_short_external_data_is_a_model_error(net, tmp_path):
    path = tmp_path / "ext.onnx"
    data = save_external(net, path)
    good = open(data, "rb").read()
    os.remove(data)
    with pytest.raises(ModelError, match=r"external data file 'ext\.onnx\.data', which is missing"):
        lrp_onnx.Explainer(path)
    with open(data, "wb") as fh:
        fh.write(good[:100])
    with pytest.raises(ModelError, match="external data could not be read"):
        lrp_onnx.Explainer(path)
    with pytest.raises(ModelError, match="external data file 'ext.onnx.data', which was not loaded"):
        lrp_onnx.Explainer(onnx.load(path, load_external_data=False))


def test_dynamic_spatial_dimensions_are_a_model_error(net):
    """Conv and pooling take dynamic height and width (tests/test_dynamic.py), but ZBox's bounds
    are constants of the input's size: epsilon_gamma_box names the tensor, the node and the fix,
    and epsilon_plus (no bounds) compiles the same model."""
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(net)
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(ModelError, match=r"tensor 'x' needs static dimensions after the batch axis, has "
                                         r"\('N', 3, 'H', 'W'\).*make_dynamic_shape_fixed.*'Conv_0' \(Conv\)"):
        lrp_onnx.Explainer(dynamic)
    lrp_onnx.Explainer(dynamic, "epsilon_plus")


# --------------------------------------------------------------------------- bad inputs


def test_integer_and_float64_inputs_are_cast_to_float32(explainer):
    """The documented choice: any real dtype is cast to the model's float32."""
    x = seeded(1).integers(-2, 3, size=(3, 3, 8, 8))
    expected = explainer.explain(x.astype(np.float32))
    for dtype in (np.int64, np.int8, np.uint8 if x.min() >= 0 else np.int16, np.float64, np.float16):
        result = explainer.explain(x.astype(dtype))
        assert result.relevance.dtype == np.float32
        same(result, expected)
    with pytest.raises(InputError, match="numeric array, got dtype complex128"):
        explainer.explain(x.astype(np.complex128))
    with pytest.raises(InputError, match="numeric array, got dtype bool"):
        explainer.explain(x > 0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_are_errors(explainer, value):
    x = images(2)
    x[1, 2, 3, 4] = value
    with pytest.raises(InputError, match="NaN or Inf"):
        explainer.explain(x)



def test_float64_values_beyond_float32_are_errors(explainer):
    with pytest.raises(InputError, match="beyond float32's range"):
        explainer.explain(np.full((1, 3, 8, 8), 1e300))


@pytest.mark.parametrize("target,message", [
    (5, r"target \[5, 5\] is out of range: the model has 5 outputs"),
    (-1, "out of range"),
    ([0, 7], r"target \[0, 7\] is out of range"),
    (1.0, "got dtype float64"),
    (np.ones((2, 4), np.float32), r"mask must have the output's shape \(2, 5\)"),
    (np.full((2, 5), np.nan, np.float32), "mask contains NaN"),
])
def test_bad_targets_are_errors(explainer, target, message):
    with pytest.raises(InputError, match=message):
        explainer.explain(images(2), target=target)


def test_empty_batch_and_bad_batch_size_are_errors(explainer):
    with pytest.raises(InputError, match="batch is empty"):
        explainer.explain(images(2)[:0])
    for bad in (0, -3, 2.5, "8", True):
        with pytest.raises(InputError, match="batch_size must be a positive int"):
            explainer.explain(images(2), batch_size=bad)


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus", "epsilon_plus_flat",
                                       "epsilon_alpha2_beta1", "tutorial_vgg16"])
def test_an_all_zero_input_has_finite_relevance(net, composite):
    """Every layer's z is its bias alone; the relevance stays finite at every layer, and rules
    whose relevance is proportional to the activation (all but z^B and flat at the input)
    give exactly 0 to a zero input."""
    ex = lrp_onnx.Explainer(net, composite=composite)
    res = ex.explain(np.zeros((2, 3, 8, 8), np.float32), layers=ex.layer_names)
    for name, r in res.layers.items():
        assert np.all(np.isfinite(r)), name
    if composite in ("epsilon_plus", "epsilon_alpha2_beta1"):
        assert not res.relevance.any()


def dead_layer_mlp(rng) -> onnx.ModelProto:
    """x(6) -> Gemm -> Relu -> Gemm with zero weights and bias (every z is 0) -> Relu -> Gemm."""
    params = {"W1": rng.normal(size=(5, 6)), "b1": rng.normal(size=5), "W2": np.zeros((4, 5)), "b2": np.zeros(4),
              "W3": rng.normal(size=(3, 4)), "b3": rng.normal(size=3)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], transB=1), helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"], transB=1), helper.make_node("Relu", ["h2"], ["a2"]),
             helper.make_node("Gemm", ["a2", "W3", "b3"], ["y"], transB=1)]
    return make_model(nodes, (6,), (3,), params)


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: type(r).__name__)
def test_a_dead_layer_has_finite_relevance(rule):
    """Every z of the middle layer is 0, and the relevance above it is not (the output is the
    last bias): 0/0 must not leak NaN into any layer."""
    ex = lrp_onnx.Explainer(dead_layer_mlp(seeded(3)), composite=Composite(((Family("all"), rule),)))
    x = seeded(4).normal(size=(4, 6)).astype(np.float32)
    res = ex.explain(x, target=np.ones((4, 3), np.float32), layers=ex.layer_names)
    assert np.all(np.abs(res.total) > 0.1)
    for name, r in res.layers.items():
        assert np.all(np.isfinite(r)), name


@pytest.mark.parametrize("rule", [R.LRP0(epsilon=0.0), R.Epsilon(0.0), R.WSquare(epsilon=0.0)],
                         ids=lambda r: type(r).__name__)
def test_a_dead_layer_with_zero_epsilon_has_finite_relevance(rule):
    ex = lrp_onnx.Explainer(dead_layer_mlp(seeded(3)), composite=Composite(((Family("all"), rule),)))
    res = ex.explain(seeded(4).normal(size=(4, 6)).astype(np.float32), target=np.ones((4, 3), np.float32))
    assert np.all(np.isfinite(res.relevance))


# --------------------------------------------------------------------------- batches, threads, processes


@pytest.mark.parametrize("target", [None, 3, "per_sample", "mask"])
def test_batch_size_chunks_give_the_unchunked_result(explainer, target):
    """250 samples in chunks of 64 (the last one short): the same relevance, output, layers
    and targets as one run, and each chunk bit for bit as that chunk alone. Each sample's
    explanation is independent of its batch (the relative epsilon is per sample), so only
    float32 rounding of kernels blocked differently for another batch size may differ: 1e-6
    of the scale."""
    x = images(250, seed=5)
    targets = {"per_sample": np.arange(250) % 5, "mask": seeded(6).uniform(0, 1, (250, 5)).astype(np.float32)}
    target = targets.get(target, target)
    whole = explainer.explain(x, target=target, layers=["pool"])
    chunked = explainer.explain(x, target=target, layers=["pool"], batch_size=64)
    for a, b in ((chunked.relevance, whole.relevance), (chunked.output, whole.output),
                 (chunked.layers["pool"], whole.layers["pool"]), (chunked.total, whole.total)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    if whole.target is not None:
        np.testing.assert_array_equal(chunked.target, whole.target)
    part = slice(64, 128)
    alone = explainer.explain(x[part], target=target[part] if np.ndim(target) else target, layers=["pool"])
    assert alone.relevance.tobytes() == chunked.relevance[part].tobytes()
    assert alone.layers["pool"].tobytes() == chunked.layers["pool"][part].tobytes()


def in_threads(jobs, threads: int = 8):
    """Run the callables ``jobs`` from ``threads`` threads released together; their results in order."""
    start = threading.Barrier(threads)

    def worker(k):
        start.wait()
        return [job() for job in jobs[k::threads]]

    with ThreadPoolExecutor(threads) as pool:
        per_thread = list(pool.map(worker, range(threads)))
    return [per_thread[i % threads][i // threads] for i in range(len(jobs))]


def test_one_explainer_from_eight_threads_equals_serial_calls(net):
    """32 calls from 8 threads at once on a new Explainer (half of them with intermediate
    layers, whose session is built on first use, by whichever thread comes first) give bit
    for bit the serial results."""
    calls = [(images(3, seed=i), ("relu1", "pool") if i % 2 else ()) for i in range(32)]
    shared = lrp_onnx.Explainer(net, composite="epsilon_gamma_box")
    parallel = in_threads([lambda c=c: shared.explain(c[0], layers=c[1]) for c in calls])
    serial = lrp_onnx.Explainer(net, composite="epsilon_gamma_box")
    for (x, layers), result in zip(calls, parallel):
        same(result, serial.explain(x, layers=layers))


def test_two_explainers_on_one_file_do_not_interfere(net_file):
    """Two Explainers of the same file with different composites, used from threads at once,
    each give what they give alone."""
    one = lrp_onnx.Explainer(net_file, composite="epsilon_plus")
    two = lrp_onnx.Explainer(net_file, composite=Composite(((Family("all"), R.LRP0()),), maxpool="avg"))
    x = images(4, seed=7)
    alone = [one.explain(x), two.explain(x)]
    results = in_threads([lambda ex=ex: ex.explain(x) for _ in range(8) for ex in (one, two)])
    for k, result in enumerate(results):
        same(result, alone[k % 2])
    assert np.abs(alone[0].relevance - alone[1].relevance).max() > 1e-3   # the composites differ


DETERMINISM_SCRIPT = """
import sys, numpy as np, lrp_onnx
ex = lrp_onnx.Explainer(sys.argv[1], composite="epsilon_gamma_box")
res = ex.explain(np.load(sys.argv[2]), layers=ex.layer_names)
np.savez(sys.argv[3], relevance=res.relevance, output=res.output, **res.layers)
"""


def test_relevance_is_bit_identical_across_runs_and_processes(net_file, tmp_path):
    x = images(4, seed=8)
    ex = lrp_onnx.Explainer(net_file, composite="epsilon_gamma_box")
    first = ex.explain(x, layers=ex.layer_names)
    same(ex.explain(x, layers=ex.layer_names), first)
    np.save(tmp_path / "x.npy", x)
    for run in range(2):
        out = tmp_path / f"run{run}.npz"
        subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, net_file, str(tmp_path / "x.npy"), str(out)],
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with np.load(out) as other:
            assert other["relevance"].tobytes() == first.relevance.tobytes()
            assert other["output"].tobytes() == first.output.tobytes()
            for name, r in first.layers.items():
                assert other[name].tobytes() == r.tobytes(), name


# --------------------------------------------------------------------------- external data


def test_a_model_with_external_data_compiles_and_its_explainer_saves_with_external_data(net, tmp_path):
    """The model's tensors in a data file beside it (as above protobuf's 2 GB): the same
    explainer as from the proto; saved with external_data=True it is two files, which a bare
    onnxruntime session runs to the same result."""
    save_external(net, tmp_path / "ext.onnx")
    ex = lrp_onnx.Explainer(tmp_path / "ext.onnx", composite="epsilon_gamma_box")
    x = images(3, seed=9)
    expected = lrp_onnx.Explainer(net, composite="epsilon_gamma_box").explain(x, target=1)
    same(ex.explain(x, target=1), expected)
    out = tmp_path / "saved" / "explainer.onnx"
    out.parent.mkdir()
    ex.save(out, external_data=True)
    assert sorted(os.listdir(out.parent)) == ["explainer.onnx", "explainer.onnx.data"]
    stored = onnx.load(out, load_external_data=False).graph.initializer
    assert {t.name for t in stored if onnx.external_data_helper.uses_external_data(t)} >= {"W2"}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    mask = np.zeros((3, 5), np.float32)
    mask[:, 1] = 1
    output, relevance = session.run(None, {"x": x, "lrp_target_mask": mask})
    assert relevance.tobytes() == expected.relevance.tobytes() and output.tobytes() == expected.output.tobytes()
    # the explainer in memory is untouched by saving (onnx moves the tensors of what it saves)
    same(ex.explain(x, target=1), expected)


def test_saving_writes_both_files_or_none(explainer, tmp_path, monkeypatch):
    """A failure while writing the data file leaves nothing behind; an explainer above
    protobuf's limit without external data is a clear error (the limit lowered to the
    size of this one)."""
    def fail(model, path, **kwargs):
        with open(os.path.join(os.path.dirname(path), kwargs["location"]), "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(onnx, "save_model", fail)
        with pytest.raises(OSError, match="disk full"):
            explainer.save(tmp_path / "explainer.onnx", external_data=True)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(lrp_onnx.compile, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(ModelError, match="above protobuf's 2 GiB limit: save it with external_data=True"):
        explainer.save(tmp_path / "explainer.onnx")
    assert os.listdir(tmp_path) == []
    explainer.save(tmp_path / "explainer.onnx", external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["explainer.onnx", "explainer.onnx.data"]
