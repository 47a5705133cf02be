"""lrp_onnx.audit.readers: an image folder, an .npz and Parquet give the same samples; a
corrupt input is an error for its sample only; bad DATA is an InputError that names it."""
import os

import numpy as np
import pytest

from lrp_onnx.audit.readers import open_source
from lrp_onnx.errors import InputError
from lrp_onnx.images import PRESETS
from test_audit_common import digits, image_folder, need_audit_extra, png_bytes

SHAPE = (None, 1, 28, 28)
MNIST = PRESETS["mnist"]   # gray, [-1, 1]: the digits' own range


def test_folder_ids_labels_and_samples_as_imagefolder(tmp_path):
    pytest.importorskip("PIL", reason="reading PNG needs Pillow")
    x, y = digits(12)
    ids = image_folder(tmp_path, x, y)
    source = open_source(tmp_path, SHAPE, MNIST)
    assert source.ids == ids and source.classes == sorted({str(v) for v in y})
    batch, errors = source.read_batch(range(len(ids)), (1, 28, 28))
    assert errors == [""] * len(ids)
    for row, sample_id in enumerate(ids):
        i = int(sample_id.split("/")[1][:3])
        assert source.classes[source.labels[row]] == str(y[i])
        np.testing.assert_allclose(batch[row], x[i], atol=1 / 127.5)   # 8-bit PNG round trip


def test_corrupt_image_is_an_error_of_its_sample_only(tmp_path):
    pytest.importorskip("PIL", reason="reading PNG needs Pillow")
    x, y = digits(4)
    image_folder(tmp_path, x, y)
    (tmp_path / str(y[0]) / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    source = open_source(tmp_path, SHAPE, MNIST)
    bad = source.ids.index(f"{y[0]}/zz_corrupt.png")
    batch, errors = source.read_batch(range(len(source)), (1, 28, 28))
    assert "zz_corrupt.png is not a readable image" in errors[bad]
    assert [e for i, e in enumerate(errors) if i != bad] == [""] * 4 and not batch[bad].any()


def test_parquet_bytes_and_string_labels(tmp_path):
    pytest.importorskip("PIL", reason="reading PNG needs Pillow")
    need_audit_extra()
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = digits(5)
    images = [png_bytes(d) for d in x]
    images[3] = b"garbage"
    names = [f"digit-{v}" for v in y]
    pq.write_table(pa.table({"image": images, "label": names}), tmp_path / "d.parquet")
    source = open_source(tmp_path / "d.parquet", SHAPE, MNIST)
    assert source.ids == ["0", "1", "2", "3", "4"] and source.classes == sorted(set(names))
    assert [source.classes[i] for i in source.labels] == names
    batch, errors = source.read_batch(range(5), (1, 28, 28))
    assert errors[3].startswith("row 3 is not a readable image") and errors[:3] + errors[4:] == [""] * 4
    np.testing.assert_allclose(batch[4], x[4], atol=1 / 127.5)


def test_npz_samples_labels_and_a_nan_sample(tmp_path):
    x, y = digits(6)
    x[2, 0, 0, 0] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=y)
    source = open_source(tmp_path / "d.npz", SHAPE)
    assert source.ids == [str(i) for i in range(6)] and source.labels.tolist() == y.tolist()
    batch, errors = source.read_batch(range(6), (1, 28, 28))
    assert errors[2] == "contains NaN or Inf values" and errors.count("") == 5
    np.testing.assert_array_equal(batch[[0, 1, 3, 4, 5]], x[[0, 1, 3, 4, 5]])


@pytest.mark.parametrize("case, message", [
    ("missing", "DATA not found"),
    ("empty", "no images in the folder"),
    ("unknown", "unknown DATA format"),
    ("shape", "'x' has shape (3, 784), the model takes samples of shape (1, 28, 28)"),
    ("no_x", "needs an array 'x'"),
])
def test_bad_data_names_the_problem(tmp_path, case, message):
    path = tmp_path / "data"
    if case == "empty":
        os.makedirs(path / "cats")
    elif case == "unknown":
        path = tmp_path / "data.csv"
        path.write_text("1,2\n")
    elif case == "shape":
        path = tmp_path / "data.npz"
        np.savez(path, x=np.zeros((3, 784), np.float32))
    elif case == "no_x":
        path = tmp_path / "data.npz"
        np.savez(path, inputs=np.zeros((3, 1, 28, 28), np.float32))
    with pytest.raises(InputError) as info:
        open_source(path, SHAPE, MNIST)
    assert message in str(info.value)
