"""Token deletion (lrp_onnx/evaluate.py, ``token_deletion``) on the tiny pooled token model of
test_text.py: every point of the MoRF/LeRF curves is checked against the model's float64
forward pass (test_text.dense_relevance) of the perturbed ids, built here independently from
the relevance order. Tolerance: the a-priori float32 bound of the depth-4 graph
(tests/tolerances.py, ``shallow_bound``)."""
import dataclasses

import numpy as np
import pytest

import lrp_onnx
from lrp_onnx import evaluate, text
from lrp_onnx.errors import InputError
from test_text import CLASSIFIER, LRP0_ALL, WORDS, dense_relevance, make_tokenizer
from tolerances import shallow_bound

SENTENCES = ["a man playing guitar on stage.", "someone performs music", "stock market fell"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = text.load_tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")))
    explainer = lrp_onnx.Explainer(CLASSIFIER, composite=LRP0_ALL)
    return tokenizer, explainer


def score(ids, target):
    return dense_relevance(CLASSIFIER, np.asarray(ids), np.zeros(len(ids), np.int64), np.zeros(3))[1][target]


def expected_curve(e, order, steps, replace):
    """The curve of one explanation, from the relevance order (most relevant first for MoRF)."""
    units = [u for u in range(len(e.tokens)) if not e.special[u]]
    ranked = sorted(units, key=lambda u: -e.relevance[u] if order == "morf" else e.relevance[u])
    curve = []
    for step in range(steps + 1):
        gone = {q for u in ranked[:int(np.ceil(step * len(units) / steps))] for q in e.pieces[u]}
        ids = e.feeds["input_ids"]
        if replace is None:
            kept = [t for q, t in enumerate(ids) if q not in gone]
        else:
            kept = [replace if q in gone else t for q, t in enumerate(ids)]
        curve.append(score(kept, e.target))
    return np.array(curve)


@pytest.mark.parametrize("replacement, token", [("mask", "[MASK]"), ("unk", "[UNK]"), ("delete", None), (14, ".")])
def test_curves_are_the_scores_of_the_perturbed_texts(setup, replacement, token):
    tokenizer, explainer = setup
    explained = text.explain_texts(explainer, tokenizer, SENTENCES, target=1)
    curves = evaluate.token_deletion(CLASSIFIER, explained, evaluate.TokenPerturbation(steps=3, replacement=replacement),
                                     tokenizer)
    replace = None if token is None else WORDS.index(token)
    for i, e in enumerate(explained):
        for order in ("morf", "lerf"):
            expected = expected_curve(e, order, 3, replace)
            got = getattr(curves, order)[i]
            np.testing.assert_allclose(got, expected, rtol=0, atol=shallow_bound(4, 8, np.abs(expected).max()))
    units = [int((~e.special).sum()) for e in explained]   # 7, 3, 3 tokens that are not special
    np.testing.assert_allclose(curves.fraction, [np.mean([np.ceil(k * n / 3) / n for n in units]) for k in range(4)])
    assert curves.fraction[-1] == 1.0 and curves.morf.shape == (3, 4)


def test_merged_words_go_as_a_whole_and_specials_stay(setup):
    tokenizer, explainer = setup
    words = text.explain_text(explainer, tokenizer, "someone performs playing", target=0, merge_words=True)
    assert words.tokens == ["[CLS]", "someone", "performs", "playing", "[SEP]"]
    # the word of largest relevance first: per_step=1 removes exactly that word's pieces
    curves = evaluate.token_deletion(CLASSIFIER, [words], evaluate.TokenPerturbation(steps=3, per_step=1,
                                                                                     replacement="delete"))
    top = 1 + int(np.argmax(words.relevance[1:4]))
    kept = [t for q, t in enumerate(words.feeds["input_ids"]) if q not in words.pieces[top]]
    assert curves.morf[0, 1] == pytest.approx(score(kept, 0), abs=shallow_bound(4, 8, 10))
    assert curves.morf[0, 3] == pytest.approx(score([WORDS.index("[CLS]"), WORDS.index("[SEP]")], 0),
                                              abs=shallow_bound(4, 8, 10))   # everything but [CLS] and [SEP] gone


def test_a_random_order_is_compared_with_the_same_machinery(setup):
    """A random baseline (any relevance) runs through the same curves: the same unperturbed
    scores, ABPC = AUC(LeRF) - AUC(MoRF), the pixel-flipping tables."""
    tokenizer, explainer = setup
    explained = text.explain_texts(explainer, tokenizer, SENTENCES, target=1)
    lrp = evaluate.token_deletion(CLASSIFIER, explained, evaluate.TokenPerturbation(steps=3), tokenizer)
    rng = np.random.default_rng(0)
    shuffled = [dataclasses.replace(e, relevance=rng.standard_normal(len(e.tokens))) for e in explained]
    random = evaluate.token_deletion(CLASSIFIER, shuffled, evaluate.TokenPerturbation(steps=3), tokenizer)
    assert lrp.abpc == pytest.approx(lrp.auc_lerf - lrp.auc_morf)
    np.testing.assert_allclose(lrp.morf[:, 0], random.morf[:, 0])   # the same unperturbed scores
    assert "| lrp |" in evaluate.table_markdown({"lrp": lrp, "random": random})


def test_bad_settings_name_the_problem(setup):
    tokenizer, explainer = setup
    e = text.explain_text(explainer, tokenizer, "a man", target=1)
    with pytest.raises(InputError, match="unknown token replacement 'blank'"):
        evaluate.TokenPerturbation(replacement="blank")
    with pytest.raises(InputError, match="steps must be a positive int"):
        evaluate.TokenPerturbation(steps=0)
    with pytest.raises(InputError, match="replacement 'mask' needs the tokenizer"):
        evaluate.token_deletion(CLASSIFIER, [e])
    with pytest.raises(InputError, match="no explanations"):
        evaluate.token_deletion(CLASSIFIER, [], tokenizer=tokenizer)
    sequence = dataclasses.replace(e, mask=np.ones((4, 3)))
    with pytest.raises(InputError, match="scores the last position"):
        evaluate.token_deletion(CLASSIFIER, [sequence], tokenizer=tokenizer)
