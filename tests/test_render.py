"""Heatmap colours and the PNG writer (decoded back with zlib, independent of the writer)."""
import struct
import zlib

import numpy as np
import pytest

from lrp_onnx.errors import InputError
from lrp_onnx.images import Fitted, fit, image_to_input, preprocess_from, relevance_map
from lrp_onnx.render import channel_sum, colorize, grid, gray, overlay, tutorial_heatmap, write_png


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


def test_zennit_colour_maps_match_zennits_palettes():
    """colorize's bwr and coldnhot at the 256 palette positions against zennit's own palette
    (8-bit, truncated: within 1.5/255)."""
    palette = pytest.importorskip("zennit.image", reason="zennit is in the test extra").palette
    position = np.arange(256) / 255.0
    for cmap in ("bwr", "coldnhot"):
        expected = np.array(palette(cmap), np.float64).reshape(256, 3) / 255
        # relevance 2t - 1 on a map whose max|R| is 1 sits at palette position t
        got = colorize(np.append(2 * position - 1, [1.0, -1.0])[None], cmap)[0, :256]
        np.testing.assert_allclose(got, expected, atol=1.5 / 255, err_msg=cmap)


def test_colorize_is_symmetric_around_zero():
    rgb = colorize(np.array([[-2.0, 0.0, 1.0]]), "bwr")
    np.testing.assert_allclose(rgb[0], [[0, 0, 1], [1, 1, 1], [1, 0.5, 0.5]], atol=1e-2)
    np.testing.assert_allclose(colorize(np.zeros((2, 2)), "coldnhot"), 0, atol=1e-2)   # its middle is black
    assert np.all(colorize(np.eye(3), "tutorial") == tutorial_heatmap(np.eye(3)))
    with pytest.raises(InputError, match="unknown colour map 'jet'"):
        colorize(np.eye(2), "jet")


def test_channel_sum_and_relevance_maps():
    r = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    np.testing.assert_array_equal(channel_sum(r), r.sum(0))
    np.testing.assert_array_equal(channel_sum(r, -1), r.sum(-1))
    np.testing.assert_array_equal(relevance_map(np.ones((3, 5, 6))), np.full((5, 6), 3.0))   # CHW
    np.testing.assert_array_equal(relevance_map(np.ones((5, 6, 3))), np.full((5, 6), 3.0))   # HWC
    assert relevance_map(np.arange(16.0)).shape == (4, 4)                 # a square vector
    assert relevance_map(np.arange(12.0), size=(3, 4)).shape == (3, 4)
    assert relevance_map(np.arange(10.0)).shape == (1, 10)                # drawn as one row


def test_overlay_shows_the_image_where_there_is_no_relevance():
    image = np.random.default_rng(0).uniform(size=(4, 4, 3))
    relevance = np.zeros((4, 4))
    relevance[0, 0] = 1.0
    out = overlay(image, relevance, "bwr", alpha=0.8)
    shade = image.mean(-1)
    np.testing.assert_allclose(out[1:, 1:], np.repeat(shade[1:, 1:, None], 3, -1))
    np.testing.assert_allclose(out[0, 0], 0.2 * shade[0, 0] + 0.8 * np.array([1, 0, 0]))


def test_image_preprocessing_crops_resizes_and_normalises():
    Image = pytest.importorskip("PIL.Image", reason="Pillow is in the images extra")
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, 2:6] = [255, 0, 0]           # a red centre square between black side bands
    image = Image.fromarray(pixels)
    spec = preprocess_from("imagenet")
    fitted = fit(spec, ("N", 3, 2, 2))
    assert fitted == Fitted("RGB", (2, 2), "NCHW")
    x, display = image_to_input(image, spec, fitted)
    # the centre crop is all red: (1 - mean) / std in channel 0, (0 - mean) / std in the others
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    np.testing.assert_allclose(x, np.broadcast_to(np.array(expected, np.float32)[:, None, None], (3, 2, 2)), rtol=1e-5)
    np.testing.assert_allclose(display, np.broadcast_to([1.0, 0, 0], (2, 2, 3)))
    mnist = preprocess_from("mnist")
    flat, _ = image_to_input(Image.fromarray(np.full((3, 3), 255, np.uint8)), mnist, fit(mnist, ("N", 9)))
    np.testing.assert_array_equal(flat, np.ones(9, np.float32))           # white -> +1, flattened
    nhwc, _ = image_to_input(image, spec, fit(spec, (1, 2, 2, 3)))
    assert nhwc.shape == (2, 2, 3)


def test_preprocessing_from_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"preset": "mnist", "invert": true, "size": [5, 5]}')
    spec = preprocess_from(str(path))
    assert spec.mode == "L" and spec.range == (-1.0, 1.0) and spec.invert and spec.size == (5, 5)
    path.write_text('{"scale": 2}')
    with pytest.raises(InputError, match="unknown preset or keys \\['scale'\\]"):
        preprocess_from(str(path))
    with pytest.raises(InputError, match="unknown preprocessing 'cifar'"):
        preprocess_from("cifar")
    with pytest.raises(InputError, match="cannot feed an image"):
        fit(preprocess_from("none"), ("N", 7, 5))
