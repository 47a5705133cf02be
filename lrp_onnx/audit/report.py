"""The audit's self-contained HTML report: the table's summary, per explained class its mean
heatmap, SpRAy's eigenvalue spectrum and embedding, and each cluster with its mean heatmap and
sample thumbnails (input and heatmap). Images are inline base64 PNGs (``lrp_onnx.render``),
plots inline SVG: one file, no network, no scripts.
"""
from __future__ import annotations

import base64
import html
import os
import tempfile
from typing import List

import numpy as np

from ..files import write_atomically
from ..render import tutorial_heatmap, upscale, write_png
from .analysis import ClassAnalysis, heatmaps
from .store import values

#: Samples shown per cluster.
THUMBNAILS = 8
#: Cluster colours in the embedding plot.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.15em;border-top:1px solid #ccc;padding-top:.6em}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3} .row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card{border:1px solid #ddd;padding:6px;border-radius:4px} .small{font-size:.8em;color:#555}
img{image-rendering:pixelated} .flag{color:#b00;font-weight:bold}
"""


def png_uri(rgb: np.ndarray, side: int = 96) -> str:
    """A data: URI of an RGB image, scaled up by an integer factor to about ``side`` pixels."""
    rgb = upscale(rgb, max(1, side // max(rgb.shape[:2])))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "image.png")
        write_png(path, rgb)
        with open(path, "rb") as fh:
            return "data:image/png;base64," + base64.b64encode(fh.read()).decode()


def _img(rgb, side=96, title="") -> str:
    return f'<img src="{png_uri(rgb, side)}" title="{html.escape(title)}" alt="{html.escape(title)}">'


def spectrum_svg(eigenvalues: np.ndarray, k: int, width: int = 220, height: int = 120) -> str:
    """Bars of the eigenvalues; the gap after the k-th (the chosen number of clusters) in red."""
    top = max(float(eigenvalues.max()), 1e-9)
    step = width / len(eigenvalues)
    bars = []
    for i, value in enumerate(eigenvalues):
        h = (height - 20) * value / top
        colour = "#d62728" if i == k else "#1f77b4"
        bars.append(f'<rect x="{i * step + 2:.1f}" y="{height - 15 - h:.1f}" width="{step - 4:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>lambda_{i + 1} = {value:.4f}</title></rect>'
                    f'<text x="{i * step + step / 2:.1f}" y="{height - 3}" font-size="9" text-anchor="middle">{i + 1}</text>')
    return (f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'<line x1="0" y1="{height - 15}" x2="{width}" y2="{height - 15}" stroke="#999"/>{"".join(bars)}</svg>')


def embedding_svg(coords: np.ndarray, clusters: np.ndarray, side: int = 160) -> str:
    """The samples at their 2-D spectral coordinates, coloured by cluster."""
    low, high = coords.min(0), coords.max(0)
    span = np.where(high > low, high - low, 1)
    xy = 6 + (coords - low) / span * (side - 12)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{side - y:.1f}" r="2.2" fill="{PALETTE[c % len(PALETTE)]}" fill-opacity=".7"/>'
                   for (x, y), c in zip(xy, clusters))
    return (f'<svg width="{side}" height="{side}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect width="{side}" height="{side}" fill="none" stroke="#ccc"/>{dots}</svg>')


def _summary(table) -> str:
    label = values(table, "label")
    prediction = values(table, "prediction")
    errors = [e for e in table.column("error").to_pylist() if e]
    known = (label >= 0) & (prediction >= 0)
    conservation = values(table, "conservation", np.nan)
    rows = [("samples", len(table)), ("explained", len(table) - len(errors)), ("errors", len(errors))]
    if known.any():
        rows.append(("accuracy (samples with a label)", f"{(label[known] == prediction[known]).mean():.2%}"))
    finite = conservation[np.isfinite(conservation)]
    if len(finite):
        rows.append(("conservation sum R / R_out: median [5%, 95%]",
                     f"{np.median(finite):.3f} [{np.quantile(finite, .05):.3f}, {np.quantile(finite, .95):.3f}]"))
    cells = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>"


def _class_table(table, classes: List[ClassAnalysis], names: List[str]) -> str:
    label = values(table, "label")
    prediction = values(table, "prediction")
    head = "<tr><th>class</th><th>samples</th><th>accuracy</th><th>clusters (eigengap)</th><th>cluster sizes</th></tr>"
    body = []
    for c in classes:
        lab = label[c.rows]
        acc = f"{(lab[lab >= 0] == prediction[c.rows][lab >= 0]).mean():.1%}" if (lab >= 0).any() else "-"
        k = c.spray.k if c.spray else "-"
        sizes = ", ".join(map(str, np.bincount(c.spray.clusters))) if c.spray else "too few samples"
        body.append(f"<tr><td><a href='#class-{c.target}'>{html.escape(names[c.target])}</a></td><td>{len(c.rows)}</td>"
                    f"<td>{acc}</td><td>{k}</td><td>{sizes}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _glance(classes: List[ClassAnalysis], names: List[str]) -> str:
    """One row per class: its mean heatmap, then the mean heatmap of each of its clusters."""
    rows = []
    for c in classes:
        if c.spray is None:
            continue
        sizes = np.bincount(c.spray.clusters, minlength=c.spray.k)
        cells = "".join(f"<div>{_img(tutorial_heatmap(m), 64, f'cluster {k}')}<div class='small'>{k}: {sizes[k]}</div></div>"
                        for k, m in enumerate(c.cluster_means))
        rows.append(f"<div class='row' style='align-items:center'><div style='width:5em'><a href='#class-{c.target}'>"
                    f"{html.escape(names[c.target])}</a></div><div>{_img(tutorial_heatmap(c.mean_heatmap), 64, 'class mean')}"
                    f"<div class='small'>all {len(c.rows)}</div></div><div style='width:1em'></div>{cells}</div>")
    return ("<h2>Strategies at a glance</h2><p class='small'>per explained class: the mean heatmap of all its samples, "
            "then of each SpRAy cluster (cluster: samples)</p>" + "".join(rows)) if rows else ""


def _errors(table, limit: int = 50) -> str:
    bad = [(i, e) for i, e in zip(table.column("id").to_pylist(), table.column("error").to_pylist()) if e]
    if not bad:
        return ""
    rows = "".join(f"<tr><td style='text-align:left'>{html.escape(i)}</td><td style='text-align:left'>{html.escape(e)}</td></tr>"
                   for i, e in bad[:limit])
    more = f"<p class='small'>and {len(bad) - limit} more (see audit.parquet)</p>" if len(bad) > limit else ""
    return f"<h2>Inputs that were not explained ({len(bad)})</h2><table><tr><th>id</th><th>error</th></tr>{rows}</table>{more}"


def _class_section(c: ClassAnalysis, table, source, relevance, names: List[str]) -> str:
    ids = table.column("id").to_pylist()
    parts = [f"<h2 id='class-{c.target}'>Class {html.escape(names[c.target])}: {len(c.rows)} samples</h2><div class='row'>",
             f"<div class='card'>{_img(tutorial_heatmap(c.mean_heatmap), 128, 'mean heatmap')}"
             f"<div class='small'>mean heatmap</div></div>"]
    if c.spray is None:
        return "".join(parts) + "<p class='small'>too few samples for SpRAy</p></div>"
    s = c.spray
    parts.append(f"<div class='card'>{spectrum_svg(s.eigenvalues, s.k)}<div class='small'>eigenvalues of the "
                 f"normalised Laplacian; largest gap after {s.k} (red) &rarr; {s.k} cluster(s)</div></div>")
    parts.append(f"<div class='card'>{embedding_svg(s.coords, s.clusters)}<div class='small'>spectral embedding "
                 "(eigenvectors 2, 3) by cluster</div></div></div>")
    for k in range(s.k):
        members = c.rows[s.clusters == k]
        shown = members[:THUMBNAILS]
        maps = heatmaps(relevance, shown, source.layout, source.size)
        thumbs = "".join(f"<div>{_img(source.display(int(i)), 64, ids[i])}<br>{_img(tutorial_heatmap(m), 64, ids[i])}</div>"
                         for i, m in zip(shown, maps))
        colour = PALETTE[k % len(PALETTE)]
        parts.append(f"<div class='card' style='margin-top:8px'><b style='color:{colour}'>cluster {k}</b>: "
                     f"{len(members)} samples ({len(members) / len(c.rows):.0%} of the class)<div class='row'>"
                     f"<div>{_img(tutorial_heatmap(c.cluster_means[k]), 128, f'cluster {k} mean heatmap')}"
                     f"<div class='small'>cluster mean heatmap</div></div>{thumbs}</div></div>")
    return "".join(parts)


def write_report(path, title: str, table, classes: List[ClassAnalysis], source, relevance, names: List[str],
                 composite) -> str:
    """Write the report to ``path`` (atomically) and return the path."""
    body = [f"<h1>LRP audit: {html.escape(title)}</h1>",
            f"<p class='small'>composite {html.escape(str(composite))}; heatmaps in the LRP tutorial's colours "
            "(red: for the explained class, blue: against); SpRAy (Lapuschkin et al. 2019) per explained class.</p>",
            _summary(table), "<h2>Classes</h2>", _class_table(table, classes, names), _glance(classes, names),
            _errors(table)]
    body += [_class_section(c, table, source, relevance, names) for c in classes]
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(document)

    write_atomically(path, write)
    return os.fspath(path)
