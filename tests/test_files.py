"""write_atomically: all or nothing."""
import pytest

from lrp_onnx.files import write_atomically


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"old")

    def fail(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_a_successful_write_replaces_the_file(tmp_path):
    path = tmp_path / "out.png"
    write_atomically(path, lambda tmp: open(tmp, "wb").write(b"new"))
    assert path.read_bytes() == b"new" and list(tmp_path.iterdir()) == [path]
