"""Heatmaps and PNGs with numpy and zlib only (no display, no matplotlib).

``tutorial_heatmap`` draws relevance as the LRP tutorial does; ``colorize`` with zennit's
colour maps ("bwr", "coldnhot"); ``channel_sum`` makes a 2-D map of a channelled relevance;
``grid`` tiles images side by side; ``overlay`` lays a heatmap over its input; ``write_png``
writes the result. ``read_image`` (PNG/JPEG) needs Pillow, the optional ``images`` extra.
Tokens: ``tokens_terminal`` (24-bit ANSI colours or plain), ``tokens_html`` and ``tokens_image``
(a sentence with its token heatmap, drawn with a built-in 5 x 9 bitmap font, so no Pillow).
"""
from __future__ import annotations

import struct
import zlib
from typing import List, Sequence, Tuple

import numpy as np

from .errors import InputError
from .files import write_atomically

# matplotlib's "seismic": dark blue, blue, white, red, dark red at 0, .25, .5, .75, 1.
_SEISMIC = np.array([[0.0, 0.0, 0.3], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]])

#: zennit's colour maps as (palette index 0..255, RGB) anchors, linear in between.
CMAPS = {
    "bwr": ((0, 128, 255), ((0, 0, 1), (1, 1, 1), (1, 0, 0))),
    "coldnhot": ((0, 64, 128, 170, 212, 255), ((0, 1, 1), (0, 0, 1), (0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1))),
}
COLORMAPS = ("tutorial",) + tuple(CMAPS)


def _check_2d(relevance) -> np.ndarray:
    relevance = np.asarray(relevance, np.float64)
    if relevance.ndim != 2:
        raise ValueError(f"a heatmap needs a 2-D map, got shape {relevance.shape} (sum the channels first)")
    return relevance


def tutorial_heatmap(relevance: np.ndarray) -> np.ndarray:
    """RGB floats in [0, 1] of a 2-D relevance map: the seismic colormap darkened by 15%, range
    symmetric at b = 10 * (mean |R|^3)^(1/3) (the tutorial's ``heatmap``)."""
    relevance = _check_2d(relevance)
    b = 10 * (np.abs(relevance) ** 3).mean() ** (1 / 3)
    t = np.clip(0.5 + relevance / (2 * b), 0, 1) if b > 0 else np.full(relevance.shape, 0.5)
    position = t * (len(_SEISMIC) - 1)
    low = np.minimum(position.astype(int), len(_SEISMIC) - 2)
    frac = (position - low)[..., None]
    return 0.85 * (_SEISMIC[low] * (1 - frac) + _SEISMIC[low + 1] * frac)


def colorize(relevance: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """RGB floats of a 2-D relevance map in a zennit colour map, normalised as zennit's
    ``imgify(symmetric=True)``: -max|R| -> 0, 0 -> the middle, max|R| -> 1."""
    if cmap == "tutorial":
        return tutorial_heatmap(relevance)
    if cmap not in CMAPS:
        raise InputError(f"unknown colour map {cmap!r}; known: {', '.join(COLORMAPS)}")
    relevance = _check_2d(relevance)
    vmax = np.abs(relevance).max()
    t = 0.5 + relevance / (2 * vmax) if vmax > 0 else np.full(relevance.shape, 0.5)
    indices, colors = CMAPS[cmap]
    position = t * 255
    return np.stack([np.interp(position, indices, [c[i] for c in colors]) for i in range(3)], axis=-1)


def channel_sum(relevance: np.ndarray, axis: int = 0) -> np.ndarray:
    """A 2-D map of one sample's relevance: summed over the channel ``axis`` of a 3-D array
    (0 for CHW, -1 for HWC); a 2-D array is returned as it is."""
    relevance = np.asarray(relevance)
    if relevance.ndim == 2:
        return relevance
    if relevance.ndim != 3:
        raise ValueError(f"channel_sum needs a 2-D or 3-D map, got shape {relevance.shape}")
    return relevance.sum(axis=axis)


def gray(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """RGB floats of a 2-D image with values in [low, high]."""
    scaled = np.clip((np.asarray(image, np.float64) - low) / (high - low), 0, 1)
    return np.repeat(scaled[..., None], 3, axis=-1)


def overlay(image: np.ndarray, relevance: np.ndarray, cmap: str = "tutorial", alpha: float = 0.8) -> np.ndarray:
    """The heatmap of ``relevance`` (2-D) over ``image`` (RGB floats, same height and width),
    shown in gray: each pixel's heatmap weight is ``alpha`` times its |R| relative to the
    heatmap's own range, so irrelevant pixels show the image."""
    relevance = _check_2d(relevance)
    image = np.asarray(image, np.float64)
    if image.shape[:2] != relevance.shape:
        raise ValueError(f"overlay: image {image.shape[:2]} and relevance {relevance.shape} differ in size")
    if cmap == "tutorial":
        scale = 10 * (np.abs(relevance) ** 3).mean() ** (1 / 3) / 2   # where the tutorial's map saturates
    else:
        scale = np.abs(relevance).max()
    weight = alpha * np.clip(np.abs(relevance) / scale, 0, 1)[..., None] if scale > 0 else 0.0
    shade = image.mean(axis=-1, keepdims=True)
    return (1 - weight) * shade + weight * colorize(relevance, cmap)


def upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel repeated ``scale`` x ``scale`` times (nearest neighbour)."""
    return np.kron(rgb, np.ones((scale, scale, 1)))


def grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 1, gap: int = 2) -> np.ndarray:
    """Tiles equal-size RGB images into rows, each pixel repeated ``scale`` times, on white."""
    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    canvas = np.ones((len(rows) * (h + gap) + gap, ncol * (w + gap) + gap, 3))
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            canvas[gap + i * (h + gap):gap + i * (h + gap) + h, gap + j * (w + gap):gap + j * (w + gap) + w] = upscale(tile, scale)
    return canvas


def write_png(path, rgb: np.ndarray) -> None:
    """Write RGB floats in [0, 1] (H, W, 3) as an 8-bit PNG (written to a temporary file, then
    moved into place, so a failure leaves nothing half-written)."""
    data = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    height, width = data.shape[:2]
    raw = b"".join(b"\x00" + data[row].tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(png)

    write_atomically(path, write)


def pillow():
    """The PIL.Image module, or a clear error naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading PNG/JPEG images needs Pillow: pip install 'lrp_onnx[images]'") from None
    return Image


def read_image(path, mode: str = "RGB"):
    """A PNG/JPEG file as a PIL image in ``mode`` ("RGB" or "L"); needs Pillow."""
    Image = pillow()
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except (OSError, ValueError) as exc:   # Pillow's UnidentifiedImageError is an OSError
        raise InputError(f"{path} is not a readable image ({exc})") from None


# --- tokens: terminal, HTML, PNG -------------------------------------------------------------

#: A 5 x 9 bitmap font of printable ASCII (drawn for this module): rows top to bottom, "#" ink;
#: capitals and digits on rows 0-6, descenders on rows 7-8. Other characters draw as a box.
_FONT_ROWS = """\
! ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..
" .#.#. .#.#. ..... ..... ..... ..... .....
# .#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.
$ ..#.. .#### #.#.. .###. ..#.# ####. ..#..
% ##..# ##..# ...#. ..#.. .#... #..## #..##
& .##.. #..#. #.#.. .#... #.#.# #..#. .##.#
' ..#.. ..#.. ..... ..... ..... ..... .....
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
* ..... ..#.. #.#.# .###. #.#.# ..#.. .....
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
, ..... ..... ..... ..... ..... .##.. ..#.. .#...
- ..... ..... ..... ##### ..... ..... .....
. ..... ..... ..... ..... ..... .##.. .##..
/ ....# ....# ...#. ..#.. .#... #.... #....
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ####. ....# ....# .###. ....# ....# ####.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
: ..... .##.. .##.. ..... .##.. .##.. .....
; ..... .##.. .##.. ..... .##.. .##.. ..#.. .#...
< ...#. ..#.. .#... #.... .#... ..#.. ...#.
= ..... ..... ##### ..... ##### ..... .....
> .#... ..#.. ...#. ....# ...#. ..#.. .#...
? .###. #...# ....# ...#. ..#.. ..... ..#..
@ .###. #...# #.### #.#.# #.### #.... .####
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ####. #...# #...# #...# #...# #...# ####.
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
[ .###. .#... .#... .#... .#... .#... .###.
\\ #.... #.... .#... ..#.. ...#. ....# ....#
] .###. ...#. ...#. ...#. ...#. ...#. .###.
^ ..#.. .#.#. #...# ..... ..... ..... .....
_ ..... ..... ..... ..... ..... ..... #####
` .#... ..#.. ..... ..... ..... ..... .....
a ..... ..... .###. ....# .#### #...# .####
b #.... #.... ####. #...# #...# #...# ####.
c ..... ..... .###. #.... #.... #...# .###.
d ....# ....# .#### #...# #...# #...# .####
e ..... ..... .###. #...# ##### #.... .###.
f ..##. .#..# .#... ###.. .#... .#... .#...
g ..... ..... .#### #...# #...# #...# .#### ....# .###.
h #.... #.... #.##. ##..# #...# #...# #...#
i ..#.. ..... .##.. ..#.. ..#.. ..#.. .###.
j ...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..
k #.... #.... #..#. #.#.. ##... #.#.. #..#.
l .##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
m ..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#
n ..... ..... #.##. ##..# #...# #...# #...#
o ..... ..... .###. #...# #...# #...# .###.
p ..... ..... ####. #...# #...# #...# ####. #.... #....
q ..... ..... .#### #...# #...# #...# .#### ....# ....#
r ..... ..... #.##. ##..# #.... #.... #....
s ..... ..... .###. #.... .###. ....# ####.
t .#... .#... ###.. .#... .#... .#..# ..##.
u ..... ..... #...# #...# #...# #..## .##.#
v ..... ..... #...# #...# #...# .#.#. ..#..
w ..... ..... #...# #...# #.#.# #.#.# .#.#.
x ..... ..... #...# .#.#. ..#.. .#.#. #...#
y ..... ..... #...# #...# #...# #...# .#### ....# .###.
z ..... ..... ##### ...#. ..#.. .#... #####
{ ...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.
| ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
} .#... ..#.. ..#.. ...#. ..#.. ..#.. .#...
~ ..... ..... .#... #.#.# ...#. ..... .....
"""
GLYPH_W, GLYPH_H = 5, 9


def _glyphs():
    glyphs = {" ": np.zeros((GLYPH_H, GLYPH_W), bool)}
    for line in _FONT_ROWS.splitlines():
        char, *rows = line.split(" ")
        char = char[-1]   # "\\" is written escaped
        bitmap = np.zeros((GLYPH_H, GLYPH_W), bool)
        bitmap[:len(rows)] = [[c == "#" for c in row] for row in rows]
        glyphs[char] = bitmap
    box = np.zeros((GLYPH_H, GLYPH_W), bool)
    box[0:7, [0, -1]] = box[[0, 6], :] = True
    return glyphs, box


_GLYPHS, _BOX = _glyphs()


def text_mask(text: str) -> np.ndarray:
    """The ink (bool, 9 x 6 per character, one column of spacing) of ``text`` in the bitmap font."""
    if not text:
        return np.zeros((GLYPH_H, 0), bool)
    cells = [np.pad(_GLYPHS.get(c, _BOX), ((0, 0), (0, 1))) for c in text]
    return np.concatenate(cells, axis=1)


def token_colors(relevance) -> np.ndarray:
    """(T, 3) RGB floats of per-token relevance in zennit's bwr, symmetric at max |R|: red for,
    blue against, white 0."""
    return colorize(np.asarray(relevance, np.float64).reshape(1, -1), "bwr")[0]


def _ink(rgb) -> np.ndarray:
    """Black text on light backgrounds, white on dark ones."""
    return np.zeros(3) if rgb @ [0.299, 0.587, 0.114] > 0.5 else np.ones(3)


def tokens_terminal(tokens: Sequence[str], relevance, color: bool = True) -> str:
    """One line per token, ``token  relevance``; with ``color`` the token on its bwr colour
    (24-bit ANSI background), else plain text."""
    relevance = np.asarray(relevance, np.float64)
    width = max((len(t) for t in tokens), default=0)
    lines = []
    for token, r, rgb in zip(tokens, relevance, token_colors(relevance)):
        cell = token.ljust(width)
        if color:
            bg = ";".join(str(int(round(255 * v))) for v in rgb)
            fg = "30" if _ink(rgb).sum() == 0 else "97"
            cell = f"\x1b[48;2;{bg}m\x1b[{fg}m{cell}\x1b[0m"
        lines.append(f"  {cell}  {r:+.4g}")
    return "\n".join(lines)


def tokens_html(blocks: Sequence[Tuple[str, Sequence[str], np.ndarray]], title: str = "") -> str:
    """A standalone HTML page: per block (heading, tokens, relevance) the tokens on their bwr
    colours (max |R| of the block at full colour), each with its relevance as a tooltip."""
    import html

    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             ".t{padding:.15em .25em;margin:.1em;border-radius:.2em;display:inline-block;font-family:monospace}</style>"
             "</head><body>", f"<h1>{html.escape(title)}</h1>" if title else ""]
    for heading, tokens, relevance in blocks:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>")
        for token, r, rgb in zip(tokens, np.asarray(relevance, np.float64), token_colors(relevance)):
            bg = "#" + "".join(f"{int(round(255 * v)):02x}" for v in rgb)
            fg = "#000" if _ink(rgb).sum() == 0 else "#fff"
            parts.append(f"<span class='t' style='background:{bg};color:{fg}' title='{r:+.6g}'>{html.escape(token)}</span>")
        parts.append("</p>")
    parts.append("<p>red: relevance for the explained score, blue: against (each block scaled to its max |R|)</p>"
                 "</body></html>\n")
    return "\n".join(parts)


def tokens_image(rows: Sequence, title: str = "", width: int = 100, scale: int = 2) -> np.ndarray:
    """RGB floats of token heatmaps. ``rows``: a str is a line of black text; (label, tokens,
    relevance) the label, then the tokens on their bwr colours (max |R| of the row at full
    colour), wrapped at ``width`` characters under the labels' column; None a half-line gap.
    ``title`` is the first line; each pixel of the bitmap font is repeated ``scale`` times."""
    cell_w, line_h, gap = GLYPH_W + 1, GLYPH_H + 4, GLYPH_W + 1
    indent = max((len(r[0]) + 1 for r in rows if isinstance(r, tuple) and r[0]), default=0)
    lines: List[np.ndarray] = []   # RGB strips of height line_h (gaps: line_h // 2)

    def draw(pieces):   # [(x, (ink mask, background, ink colour))]
        canvas = np.ones((line_h, width * cell_w + 2 * gap, 3))
        for x, (mask, background, ink) in pieces:
            canvas[1:line_h - 1, x:x + mask.shape[1] + 4] = background
            canvas[3:3 + GLYPH_H, x + 2:x + 2 + mask.shape[1]][mask] = ink
        return canvas

    def plain(text):
        return text_mask(text[:width]), np.ones(3), np.zeros(3)

    for row in ([title] if title else []) + list(rows):
        if row is None:
            lines.append(np.ones((line_h // 2, width * cell_w + 2 * gap, 3)))
        elif isinstance(row, str):
            lines.append(draw([(gap, plain(row))]))
        else:
            label, tokens, relevance = row
            start = gap + indent * cell_w
            pieces, x, used = [(gap, plain(label))] if label else [], start, indent
            for token, rgb in zip(tokens, token_colors(relevance)):
                token = token[:width - indent - 1]
                if used > indent and used + len(token) + 1 > width:   # wrap under the first token
                    lines.append(draw(pieces))
                    pieces, x, used = [], start, indent
                pieces.append((x, (text_mask(token), rgb, _ink(rgb))))
                x += (len(token) + 1) * cell_w
                used += len(token) + 1
            lines.append(draw(pieces))
    return upscale(np.concatenate(lines), scale)


def write_token_report(out_dir, stem: str, blocks: Sequence[Tuple[str, Sequence[str], np.ndarray]],
                       title: str = "") -> Tuple[str, str]:
    """``<stem>.html`` (``tokens_html``) and ``<stem>.png`` (``tokens_image``) in ``out_dir``."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    page, png = os.path.join(out_dir, f"{stem}.html"), os.path.join(out_dir, f"{stem}.png")

    def write_page(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(tokens_html(blocks, title))

    write_atomically(page, write_page)
    write_png(png, tokens_image([line for heading, tokens, relevance in blocks
                                 for line in (heading, ("", tokens, relevance), None)], title))
    return page, png
