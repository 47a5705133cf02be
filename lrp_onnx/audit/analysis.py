"""Spectral Relevance Analysis (SpRAy; Lapuschkin et al., "Unmasking Clever Hans predictors and
assessing what machines really learn", Nat. Commun. 10, 1096, 2019): per explained class, the
heatmaps are downscaled and normalised, a k-nearest-neighbour affinity graph is built on them,
its normalised Laplacian gives a spectral embedding, the largest eigengap the number of
clusters, and k-means on the embedding the clusters: groups of samples that the model decides
on for the same reasons, a Clever Hans strategy among them.

Built from scikit-learn (kneighbors_graph, KMeans) and scipy (laplacian, eigh), the blocks that
CoRelAy wraps (README, Auditing a dataset, says why not CoRelAy itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..images import relevance_map
from .store import values


@dataclass
class Spray:
    """SpRAy of one group of heatmaps: the smallest eigenvalues of the affinity graph's
    normalised Laplacian, the spectral embedding (one row per sample), the eigengap's number
    of clusters ``k`` and its clusters (0 = the largest), k-means clusterings for every k
    tried, and 2-D coordinates for a plot (the first two non-trivial eigenvectors)."""

    eigenvalues: np.ndarray
    embedding: np.ndarray
    k: int
    clusters: np.ndarray
    clusterings: Dict[int, np.ndarray]
    coords: np.ndarray


@dataclass
class ClassAnalysis:
    """One explained class: its samples (table rows), mean heatmap and SpRAy (None when the
    class has too few samples for a neighbourhood graph)."""

    target: int
    rows: np.ndarray
    mean_heatmap: np.ndarray
    spray: Optional[Spray]
    cluster_means: List[np.ndarray] = field(default_factory=list)


def _sklearn():
    try:
        import sklearn  # noqa: F401
        from scipy.sparse import csgraph  # noqa: F401
    except ImportError:
        raise InputError("SpRAy needs scikit-learn and scipy: pip install 'lrp_onnx[audit]'") from None


def downscale(maps: np.ndarray, side: int = 16) -> np.ndarray:
    """(n, h, w) heatmaps sum-pooled by the integer factor that brings the longer side to at
    most ``side`` pixels (edges that do not fill a pool are cropped)."""
    n, h, w = maps.shape
    f = max(1, -(-max(h, w) // side))
    h2, w2 = h // f, w // f
    return maps[:, :h2 * f, :w2 * f].reshape(n, h2, f, w2, f).sum(axis=(2, 4))


def spray(maps: np.ndarray, max_clusters: int = 8, neighbors: int = 10, side: int = 16, seed: int = 0) -> Spray:
    """SpRAy on (n, h, w) heatmaps: downscaled (``downscale``), each scaled to unit L2 norm, a
    symmetric kNN connectivity graph, the ``max_clusters + 1`` smallest eigenpairs of its
    normalised Laplacian, k = the position of the largest eigengap, k-means (seeded) on the
    row-normalised first k eigenvectors (Ng, Jordan and Weiss 2001)."""
    _sklearn()
    from scipy.linalg import eigh
    from scipy.sparse import csgraph
    from sklearn.cluster import KMeans
    from sklearn.neighbors import kneighbors_graph
    from threadpoolctl import threadpool_limits

    n = len(maps)
    features = downscale(np.asarray(maps, np.float64), side).reshape(n, -1)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    features = features / np.where(norms > 0, norms, 1)
    graph = kneighbors_graph(features, n_neighbors=min(neighbors, n - 1), mode="connectivity", include_self=False)
    affinity = graph.maximum(graph.T)
    laplacian = csgraph.laplacian(affinity, normed=True).toarray()
    m = min(max_clusters + 1, n)
    eigenvalues, vectors = eigh(laplacian, subset_by_index=(0, m - 1))
    eigenvalues = np.clip(eigenvalues, 0, None)
    k = int(np.argmax(np.diff(eigenvalues))) + 1 if m > 1 else 1
    with threadpool_limits(1):   # small problems: threads cost more than they give
        clusterings = {c: _kmeans(KMeans, vectors[:, :c], c, seed) for c in range(2, m)}
    clusters = clusterings.get(k, np.zeros(n, np.int64))
    coords = vectors[:, 1:3] if m >= 3 else np.zeros((n, 2))
    return Spray(eigenvalues, vectors, k, clusters, clusterings, coords)


def _kmeans(KMeans, u: np.ndarray, c: int, seed: int) -> np.ndarray:
    """k-means (seeded) of the row-normalised embedding ``u`` into ``c`` clusters, numbered by
    size (0: the largest)."""
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=c, n_init=10, random_state=seed).fit_predict(u)
    rank = np.empty(c, np.int64)
    rank[np.lexsort((np.arange(c), -np.bincount(labels, minlength=c)))] = np.arange(c)
    return rank[labels]


def heatmaps(relevance, rows: np.ndarray, layout: str = "auto", size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """(len(rows), h, w) float32 2-D relevance maps (channels summed, ``relevance_map``) of
    the given rows of a relevance array (numpy or zarr)."""
    block = np.asarray(relevance.oindex[rows] if hasattr(relevance, "oindex") else relevance[rows], np.float32)
    return np.stack([relevance_map(r, layout, size) for r in block]).astype(np.float32)


def analyse(table, relevance, layout: str = "auto", size=None, max_clusters: int = 8, neighbors: int = 10,
            min_samples: int = 12, seed: int = 0) -> Tuple[List[ClassAnalysis], np.ndarray]:
    """SpRAy per explained class (the table's ``target``) of the rows explained without error.
    Returns the per-class analyses and one cluster per row (-1: not explained or in a class
    with fewer than ``min_samples`` samples)."""
    target = values(table, "target")
    ok = np.array([not e for e in table.column("error").to_pylist()], bool)
    cluster = np.full(len(target), -1, np.int64)
    results = []
    for t in np.unique(target[ok]):
        rows = np.flatnonzero(ok & (target == t))
        maps = heatmaps(relevance, rows, layout, size)
        result = ClassAnalysis(int(t), rows, maps.mean(0), None)
        if len(rows) >= min_samples:
            result.spray = spray(maps, max_clusters, neighbors, seed=seed)
            cluster[rows] = result.spray.clusters
            result.cluster_means = [maps[result.spray.clusters == c].mean(0) for c in range(result.spray.k)]
        results.append(result)
    return results, cluster
