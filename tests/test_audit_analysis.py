"""lrp_onnx.audit.analysis: SpRAy (Lapuschkin et al. 2019) separates two planted strategies,
chooses k by the eigengap, and leaves unexplained rows and small classes unclustered."""
import numpy as np
import pytest

from lrp_onnx.audit.analysis import analyse, downscale, spray


def planted(n_a=60, n_b=25, seed=0):
    """Heatmaps of two strategies: evidence in the top-left (a) or bottom-right (b) corner, noise."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0, 0.05, (n_a + n_b, 28, 28)).astype(np.float32)
    maps[:n_a, 2:8, 2:8] += rng.uniform(0.5, 1.5, (n_a, 1, 1))
    maps[n_a:, 20:26, 20:26] += rng.uniform(0.5, 1.5, (n_b, 1, 1))
    return maps, np.r_[np.zeros(n_a, int), np.ones(n_b, int)]


def test_downscale_is_sum_pooling():
    maps = np.arange(2 * 28 * 28, dtype=np.float64).reshape(2, 28, 28)
    small = downscale(maps, side=14)
    assert small.shape == (2, 14, 14)
    assert small[1, 3, 5] == maps[1, 6:8, 10:12].sum()


def test_spray_finds_two_strategies_by_the_eigengap():
    pytest.importorskip("sklearn", reason="SpRAy uses scikit-learn")
    maps, truth = planted()
    result = spray(maps, max_clusters=6)
    assert result.k == 2
    assert np.all(np.diff(result.eigenvalues) >= -1e-9) and result.eigenvalues[0] < 1e-9
    gaps = np.diff(result.eigenvalues)
    assert gaps[1] == gaps.max()
    np.testing.assert_array_equal(result.clusters, truth)   # 0: the larger strategy
    assert sorted(result.clusterings) == [2, 3, 4, 5, 6] and result.coords.shape == (85, 2)
    again = spray(maps, max_clusters=6)
    assert all(np.array_equal(again.clusterings[c], result.clusterings[c]) for c in result.clusterings)


def test_analyse_per_target_class_skips_errors_and_small_classes():
    pytest.importorskip("sklearn", reason="SpRAy uses scikit-learn")
    pa = pytest.importorskip("pyarrow", reason="the audit table is pyarrow")
    maps, truth = planted()
    relevance = np.concatenate([maps, maps[:5]])[:, None]          # 85 of class 3, 5 of class 7
    target = np.r_[np.full(85, 3), np.full(5, 7)]
    errors = [""] * 90
    errors[10] = "not readable"
    table = pa.table({"target": target, "error": errors})
    classes, cluster = analyse(table, relevance, max_clusters=6)
    assert [c.target for c in classes] == [3, 7] and classes[1].spray is None
    assert cluster[10] == -1 and (cluster[85:] == -1).all()
    rows = np.r_[0:10, 11:85]
    np.testing.assert_array_equal(cluster[rows], truth[rows])
    np.testing.assert_allclose(classes[0].mean_heatmap, maps[rows].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(classes[0].cluster_means[1], maps[60:85].mean(0), rtol=1e-5, atol=1e-6)
