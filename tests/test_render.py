"""Heatmap colours and the PNG writer (decoded back with zlib, independent of the writer)."""
import struct
import zlib

import numpy as np

from lrp_onnx.render import grid, gray, tutorial_heatmap, write_png


def read_png(path):
    """Minimal decoder for the writer's output: 8-bit RGB, filter 0 rows."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(height, width, 3)


def test_heatmap_colours_follow_the_tutorial():
    """seismic (matplotlib's anchors) darkened by 15%, over [-b, b], b = 10 (mean|R|^3)^(1/3)."""
    relevance = np.random.default_rng(0).laplace(size=(20, 20))
    relevance[0, 0] = 0.0
    rgb = tutorial_heatmap(relevance)
    b = 10 * np.mean(np.abs(relevance) ** 3) ** (1 / 3)
    t = np.clip(0.5 + relevance / (2 * b), 0, 1)
    anchors = [0, 0.25, 0.5, 0.75, 1]
    seismic = {"r": [0, 0, 1, 1, 0.5], "g": [0, 0, 1, 0, 0], "b": [0.3, 1, 1, 0, 0]}
    for channel, values in enumerate(seismic.values()):
        np.testing.assert_allclose(rgb[..., channel], 0.85 * np.interp(t, anchors, values), atol=1e-12)
    np.testing.assert_allclose(rgb[0, 0], [0.85, 0.85, 0.85])
    assert np.all(tutorial_heatmap(np.zeros((3, 3))) == 0.85)


def test_png_round_trip(tmp_path):
    image = grid([[gray(np.eye(4), 0, 1), tutorial_heatmap(np.eye(4))]], scale=2, gap=1)
    path = tmp_path / "x.png"
    write_png(path, image)
    decoded = read_png(path)
    assert decoded.shape == image.shape == (1 + 8 + 1, 1 + 2 * (8 + 1), 3)
    np.testing.assert_array_equal(decoded, (image * 255 + 0.5).astype(np.uint8))
    assert not (tmp_path / "x.png.partial").exists()
