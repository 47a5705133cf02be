"""Tokens in, tokens out (lrp_onnx/text.py): tokenization, per-token relevance, word merging,
similarity.

The model is written with onnx.helper: BERT's three embedding lookups (word, token type,
position from Range(T)) summed, mean pooling over the attention mask, then a dense head to an
embedding (N, E) or class logits (N, C). The tokenizer is a tiny WordPiece built with
``tokenizers`` (BERT's normalizer, pre-tokenizer and [CLS]/[SEP] template). The oracle is the
dense float64 formula of the rules with LRP-0 everywhere (README, Supported ops): the head and
the pooling sum take z-rule steps, the Add of the embeddings splits in proportion to the
summands, the mask product and the division by the token count pass. Tolerance: the a-priori
float32 bound of a depth-4 graph of fan-in <= 8 (tests/tolerances.py, ``shallow_bound``).
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lrp_onnx
from lrp_onnx import text
from lrp_onnx.errors import InputError
from tolerances import shallow_bound

#: LRP-0 on every layer and in the sums' proportional split (family "sum").
LRP0_ALL = lrp_onnx.Composite(((lrp_onnx.Family("sum"), lrp_onnx.LRP0()), (lrp_onnx.Family("all"), lrp_onnx.LRP0())),
                              "winner", "lrp0")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "play", "##ing", "guitar", "music", "stock",
         "market", "fell", ".", "someone", "perform", "##s", "with", "on", "stage"]
HIDDEN, POSITIONS = 6, 32


def make_tokenizer(folder):
    """A WordPiece tokenizer of WORDS, BERT-style, saved as folder/tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.enable_padding(length=12, pad_id=0, pad_token="[PAD]")   # load_tokenizer must switch it off
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def pooled_model(out_dim=5, seed=0) -> onnx.ModelProto:
    """ids (N, T) -> mean over the attention mask of word + type + position embeddings -> W, b:
    (N, out_dim)."""
    rng = np.random.default_rng(seed)
    params = {"word": rng.normal(size=(len(WORDS), HIDDEN)), "type": rng.normal(size=(2, HIDDEN)),
              "position": rng.normal(size=(POSITIONS, HIDDEN)), "W": rng.normal(size=(HIDDEN, out_dim)),
              "b": rng.normal(size=out_dim)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("zero", 0), ("one", 1), ("axis0", [0]),
                                                                          ("axis1", [1]), ("axis2", [2]))]
    nodes = [
        helper.make_node("Gather", ["word", "input_ids"], ["w"], name="word_lookup"),
        helper.make_node("Gather", ["type", "token_type_ids"], ["ty"], name="type_lookup"),
        helper.make_node("Shape", ["input_ids"], ["length"], start=1, end=2),
        helper.make_node("Squeeze", ["length"], ["length_scalar"]),
        helper.make_node("Range", ["zero", "length_scalar", "one"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "axis0"], ["position_ids"]),
        helper.make_node("Gather", ["position", "position_ids"], ["p"], name="position_lookup"),
        helper.make_node("Add", ["w", "ty"], ["e"]),
        helper.make_node("Add", ["e", "p"], ["h"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["m", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["m", "count"], ["weights"]),
        helper.make_node("Unsqueeze", ["weights", "axis1"], ["weights3"]),
        helper.make_node("MatMul", ["weights3", "h"], ["mean3"], name="pool"),   # (N, 1, T) @ (N, T, H)
        helper.make_node("Squeeze", ["mean3", "axis1"], ["mean"]),
        helper.make_node("Gemm", ["mean", "W", "b"], ["out"], name="head"),
    ]
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "T"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", out_dim])
    return helper.make_model(helper.make_graph(nodes, "pooled", graph_inputs, [out], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def stab(z):
    return z + 1e-9 * np.where(z >= 0, 1.0, -1.0)   # LRP0's epsilon (README, Rules)


def dense_relevance(model, ids, types, mask_at_output):
    """Per-token relevance (T,) of one text, float64, LRP-0 everywhere, and the output."""
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    w, ty, pos = p["word"][ids], p["type"][types], p["position"][:len(ids)]
    e = w + ty
    h = e + pos
    mean = h.mean(axis=0)
    out = mean @ p["W"] + p["b"]
    r_mean = mean * ((out * mask_at_output / stab(out)) @ p["W"].T)
    r_h = h / stab(h.sum(axis=0)) * r_mean      # the pooling sum's z-rule; / count passes
    r_e, r_pos = e / stab(h) * r_h, pos / stab(h) * r_h
    r_w, r_ty = w / stab(e) * r_e, ty / stab(e) * r_e
    return (r_w + r_ty + r_pos).sum(axis=-1), out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return text.load_tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")))


CLASSIFIER, EMBEDDER = pooled_model(out_dim=3), pooled_model(out_dim=5, seed=1)


@pytest.fixture(scope="module")
def classifier():
    return lrp_onnx.Explainer(CLASSIFIER, composite=LRP0_ALL)


@pytest.fixture(scope="module")
def embedder():
    return lrp_onnx.Explainer(EMBEDDER, composite=LRP0_ALL)


def bound(scale):
    return shallow_bound(4, 8, scale)


def test_tokens_and_relevance_match_the_dense_formula(tokenizer, classifier):
    res = text.explain_text(classifier, tokenizer, "A man playing guitar.")
    assert res.tokens == ["[CLS]", "a", "man", "play", "##ing", "guitar", ".", "[SEP]"]   # no padding
    assert res.special.tolist() == [True] + [False] * 6 + [True]
    assert res.sequence.tolist() == [-1, 0, 0, 0, 0, 0, 0, -1]
    ids = np.array([WORDS.index(t) for t in res.tokens])
    one_hot = np.eye(3)[res.target]
    expected, out = dense_relevance(CLASSIFIER, ids, np.zeros_like(ids), one_hot)
    assert res.target == int(out.argmax())
    np.testing.assert_allclose(res.relevance, expected, rtol=0, atol=bound(np.abs(expected).max()))
    np.testing.assert_array_equal(res.mask, one_hot)
    assert res.score == pytest.approx(out[res.target], rel=1e-5)
    assert res.feeds["input_ids"].tolist() == ids.tolist() and res.feeds["attention_mask"].tolist() == [1] * 8
    # LRP-0 with the bias in z: the bias keeps its share, so the tokens sum to out * (1 - b / z)
    b = numpy_helper.to_array(next(t for t in CLASSIFIER.graph.initializer if t.name == "b"))
    assert res.relevance.sum() == pytest.approx(out[res.target] - b[res.target], rel=1e-4)


def test_a_text_pair_gets_token_types_and_sequences(tokenizer, classifier):
    res = text.explain_text(classifier, tokenizer, "a man", text_pair="music", target=2)
    assert res.tokens == ["[CLS]", "a", "man", "[SEP]", "music", "[SEP]"]
    assert res.feeds["token_type_ids"].tolist() == [0, 0, 0, 0, 1, 1]
    assert res.sequence.tolist() == [-1, 0, 0, -1, 1, -1] and res.target == 2
    ids = res.feeds["input_ids"]
    expected, _ = dense_relevance(CLASSIFIER, ids, res.feeds["token_type_ids"], np.eye(3)[2])
    np.testing.assert_allclose(res.relevance, expected, rtol=0, atol=bound(np.abs(expected).max()))


def test_merged_words_sum_their_pieces(tokenizer, classifier):
    pieces = text.explain_text(classifier, tokenizer, "Someone performs playing music.")
    words = text.explain_text(classifier, tokenizer, "Someone performs playing music.", merge_words=True)
    assert pieces.tokens == ["[CLS]", "someone", "perform", "##s", "play", "##ing", "music", ".", "[SEP]"]
    assert words.tokens == ["[CLS]", "Someone", "performs", "playing", "music", ".", "[SEP]"]   # the text's spans
    assert words.pieces == [(0,), (1,), (2, 3), (4, 5), (6,), (7,), (8,)]
    expected = [pieces.relevance[list(p)].sum() for p in words.pieces]
    np.testing.assert_allclose(words.relevance, expected, rtol=1e-12)
    assert words.relevance.sum() == pytest.approx(pieces.relevance.sum(), rel=1e-12)
    assert words.spans[2] == (8, 16) and words.special.tolist() == [True] + [False] * 5 + [True]
    for name, per_token in pieces.sources.items():
        np.testing.assert_allclose(words.sources[name], [per_token[list(p)].sum() for p in words.pieces], rtol=1e-12)


def test_word_markers_of_sentencepiece_and_byte_level_bpe_start_words():
    tokens = ["<s>", "\u2581play", "ing", "\u2581the", "\u2581", "12", "</s>"]
    special = [True, False, False, False, False, False, True]
    groups = text._word_groups(tokens, special, [-1, 0, 0, 0, 0, 0, -1], [None, 0, 0, 0, 0, 0, None])
    assert groups == [[0], [1, 2], [3], [4, 5], [6]]   # one pre-token, split at the markers
    gpt2 = text._word_groups(["The", "\u0120gu", "itar", "\u0120is"], [False] * 4, [0] * 4, [0, 1, 1, 2])
    assert gpt2 == [[0], [1, 2], [3]]


def test_many_texts_of_different_lengths_equal_each_alone(tokenizer, classifier):
    texts = ["a man", "someone performs music on stage", "a man"]
    together = text.explain_texts(classifier, tokenizer, texts, target=1, batch_size=2)
    for t, res in zip(texts, together):
        alone = text.explain_text(classifier, tokenizer, t, target=1)
        assert res.tokens == alone.tokens
        np.testing.assert_allclose(res.relevance, alone.relevance, rtol=0, atol=bound(np.abs(alone.relevance).max()))


def test_similarity_relevance_sums_to_the_cosine(tokenizer, embedder):
    a, b = "A man is playing a guitar on stage.", "Someone performs music with a guitar."
    sim = text.explain_similarity(embedder, tokenizer, a, b)
    ids_a, ids_b = sim.a.feeds["input_ids"], sim.b.feeds["input_ids"]
    _, e_a = dense_relevance(EMBEDDER, ids_a, np.zeros_like(ids_a), np.zeros(5))
    _, e_b = dense_relevance(EMBEDDER, ids_b, np.zeros_like(ids_b), np.zeros(5))
    cos = e_a @ e_b / np.linalg.norm(e_a) / np.linalg.norm(e_b)
    assert sim.score == pytest.approx(cos, rel=1e-5)
    for res, e, other in ((sim.a, e_a, e_b), (sim.b, e_b, e_a)):
        mask = other / np.linalg.norm(e_a) / np.linalg.norm(e_b)   # the other embedding, held fixed
        np.testing.assert_allclose(res.mask, mask, rtol=1e-5)
        assert res.score == pytest.approx(cos, rel=1e-5)   # relevance at the output: e * mask, summing to cos
        expected, _ = dense_relevance(EMBEDDER, res.feeds["input_ids"],
                                      np.zeros_like(res.feeds["input_ids"]), mask)
        np.testing.assert_allclose(res.relevance, expected, rtol=0, atol=bound(np.abs(expected).max()))


def test_similarity_without_bias_conserves_the_cosine(tokenizer):
    model = pooled_model(out_dim=5, seed=2)
    for t in model.graph.initializer:
        if t.name == "b":
            t.CopyFrom(numpy_helper.from_array(np.zeros(5, np.float32), "b"))
    sim = text.explain_similarity(lrp_onnx.Explainer(model, composite=LRP0_ALL), tokenizer, "a man", "stock market")
    for res in (sim.a, sim.b):
        assert res.relevance.sum() == pytest.approx(sim.score, rel=1e-4)
        assert res.conservation == pytest.approx(1.0, rel=1e-4)


def test_only_the_inputs_the_model_has_are_fed(tokenizer):
    no_mask = lrp_onnx.Explainer(_sequence_model(), composite=LRP0_ALL)   # input_ids, token_type_ids
    res = text.explain_text(no_mask, tokenizer, "a man", text_pair="a")
    assert list(res.feeds) == ["input_ids", "token_type_ids"] and res.feeds["token_type_ids"].tolist() == [0, 0, 0, 0, 1, 1]
    assert res.output.shape == (6, 5) and res.mask[-1, res.target] == 1 and res.mask.sum() == 1   # the last position


def test_errors_name_the_problem(tokenizer, classifier, embedder, tmp_path):
    with pytest.raises(InputError, match="no tokenizer.json in"):
        text.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="is not a Hugging Face tokenizer.json"):
        text.load_tokenizer(tmp_path)
    with pytest.raises(InputError, match="non-empty string"):
        text.explain_text(classifier, tokenizer, "  ")
    with pytest.raises(InputError, match="similarity needs a sentence-embedding model"):
        text.explain_similarity(lrp_onnx.Explainer(_sequence_model(), composite=LRP0_ALL), tokenizer, "a", "man")
    image = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match="not what a tokenizer gives"):
        text.explain_text(lrp_onnx.Explainer(image, composite=LRP0_ALL), tokenizer, "a man")
    with pytest.raises(InputError, match="has no \\[MASK\\] or <mask> token"):
        text.special_token_id(_bare_tokenizer(), "mask")


def _sequence_model():
    """input_ids, token_type_ids (vocabulary 11) -> (N, T, 5) per-token logits."""
    from test_inputs import token_model

    return token_model()


def _bare_tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))


def test_token_rendering_terminal_html_and_png():
    from lrp_onnx import render

    tokens, relevance = ["[CLS]", "<b>", "guitar"], np.array([0.5, -1.0, 0.25])
    plain = render.tokens_terminal(tokens, relevance, color=False).splitlines()
    assert plain == ["  [CLS]   +0.5", "  <b>     -1", "  guitar  +0.25"]
    coloured = render.tokens_terminal(tokens, relevance, color=True).splitlines()
    assert coloured[1].startswith("  \x1b[48;2;0;0;255m\x1b[97m<b>   \x1b[0m")   # max |R| against: full blue, white ink
    page = render.tokens_html([("pair & more", tokens, relevance)], "title")
    assert "&lt;b&gt;" in page and "<b>" not in page and "pair &amp; more" in page and "background:#0000ff" in page
    image = render.tokens_image([("R", tokens, relevance)], width=40, scale=1)
    cell = render.GLYPH_W + 1
    # the label column ("R" + a space), then the tokens: [CLS] on its colour, its ink black
    x = cell + 2 * cell
    assert np.allclose(image[2, x + 1], render.token_colors(relevance)[0], atol=1 / 255)
    strip = image[3:3 + render.GLYPH_H, x + 2:x + 2 + 5 * cell]
    np.testing.assert_array_equal((strip == 0).all(axis=-1), render.text_mask("[CLS]"))
    assert render.text_mask("\u00e9").sum() == render.text_mask("\u2581").sum() > 0   # unknown: a box
