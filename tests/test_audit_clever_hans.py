"""A planted Clever Hans (lrp_onnx.audit.clever_hans): a digits CNN trained so that a small
mark predicts class 4, audited on digits where half of the 4s carry it. SpRAy (Lapuschkin et
al. 2019) singles out the marked 4s: a cluster that is >= 90% marked and holds >= 90% of
them, whose mean heatmap (the one in the report) puts its evidence on the mark. The same
audit of a model trained without marks finds no such cluster."""
import os

import numpy as np
import pytest

from lrp_onnx import audit
from lrp_onnx.audit import clever_hans as ch
from lrp_onnx.audit.report import png_uri
from lrp_onnx.audit.store import values
from lrp_onnx.render import tutorial_heatmap
from test_audit_common import need_audit_extra


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """{"marked" | "clean": (model path, Audit)}, the planted digits and which are marked."""
    pytest.importorskip("torch", reason="training the digits CNN needs the torch extra")
    need_audit_extra()
    folder = tmp_path_factory.mktemp("clever_hans")
    x, y, marked = ch.planted_digits()
    np.savez(folder / "planted.npz", x=x, y=y)
    result = {}
    for name, clever in (("marked", True), ("clean", False)):
        path = str(folder / f"{name}.onnx")
        ch.export(ch.train(clever), path)
        result[name] = path, audit.run(path, folder / "planted.npz", folder / name, ch.COMPOSITE, batch_size=256,
                                       virelay=False, progress=False)
    return result, x, y, marked


def test_only_the_marked_model_uses_the_mark(audits):
    result, x, y, marked = audits
    assert marked.sum() == round(0.5 * (y == 4).sum()) and set(y[marked]) == {4}
    assert ch.marked_accuracy(result["marked"][0], x, y) < 0.1    # marked 1s, 7s, ... become 4s
    assert ch.marked_accuracy(result["clean"][0], x, y) > 0.9


def test_spray_singles_out_the_marked_samples(audits):
    result, x, y, marked = audits
    outcome = result["marked"][1]
    purity, recall, cluster = ch.best_cluster(outcome.table, marked)
    assert purity >= 0.9 and recall >= 0.9, (purity, recall)
    four = next(c for c in outcome.classes if c.target == 4)
    mean = four.cluster_means[cluster]
    positive = np.clip(mean, 0, None)
    inside = positive[ch.mark_mask()].sum() / positive.sum()
    assert inside > 0.25, inside          # the mark is 16 of 784 pixels (2%)
    assert np.unravel_index(mean.argmax(), mean.shape) in set(zip(*np.nonzero(ch.mark_mask())))
    with open(outcome.paths["report"]) as fh:
        assert png_uri(tutorial_heatmap(mean), 128) in fh.read()   # the report shows this mean heatmap


def test_the_clean_model_has_no_such_cluster(audits):
    result, x, y, marked = audits
    table = result["clean"][1].table
    target, cluster = values(table, "target"), values(table, "cluster")
    for t in np.unique(target):
        for c in np.unique(cluster[target == t]):
            members = (target == t) & (cluster == c)
            assert not (marked[members].mean() >= 0.9 and (marked & members).sum() >= 0.9 * marked.sum()), (t, c)
    relevance = np.abs(np.asarray(result["clean"][1].store.relevance[:])[marked, 0])
    assert relevance[:, ch.mark_mask()].sum() / relevance.sum() < 0.05   # little relevance on the mark
    assert os.path.isfile(result["clean"][1].paths["report"])
