"""Text in, tokens out: tokenize with Hugging Face ``tokenizers``, explain, read relevance per token.

``explain_text(explainer, tokenizer, text)`` encodes the text (and ``text_pair``) with the
tokenizer, feeds the model the inputs it has among ``input_ids``, ``attention_mask`` and
``token_type_ids``, and returns the tokens with their relevance (``Explanation.relevance`` of a
token model: the sum over every embedding lookup, README "Transformers"). No torch or
transformers at run time: ``tokenizers`` and onnxruntime only.

Word pieces are merged into words on request (``merge_words``): the pieces of one word (the
tokenizer's word ids, so BERT's ``##`` continuations; a new word at SentencePiece's ``▁`` and
byte-level BPE's ``Ġ`` markers) get the sum of their relevance, which keeps the total.

``explain_similarity`` explains the cosine similarity of two sentence embeddings (see there).
"""
from __future__ import annotations

import dataclasses
import os
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

#: The model inputs a tokenizer gives, and the Encoding attribute each is read from.
TOKEN_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}

#: Markers that start a new word inside one pre-tokenized word (SentencePiece, byte-level BPE).
WORD_START_MARKERS = ("\u2581", "\u0120")


def load_tokenizer(path):
    """The ``tokenizers.Tokenizer`` in ``path`` (a folder with ``tokenizer.json``, or the file),
    with padding switched off (one text is explained as it is; truncation is kept)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("text needs Hugging Face tokenizers: pip install tokenizers") from None
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise InputError(f"no tokenizer.json in {path}: give the folder of a Hugging Face model (its "
                         f"tokenizer.json) or the tokenizer.json file itself")
    try:
        tokenizer = Tokenizer.from_file(file)
    except Exception as exc:   # tokenizers raises its own Exception subclass for every parse error
        raise InputError(f"{file} is not a Hugging Face tokenizer.json ({exc})") from None
    tokenizer.no_padding()
    return tokenizer


def special_token_id(tokenizer, kind: str) -> int:
    """The id of the tokenizer's ``kind`` token ("mask": [MASK] or <mask>, "unk": [UNK] or <unk>)."""
    names = {"mask": ("[MASK]", "<mask>"), "unk": ("[UNK]", "<unk>")}[kind]
    for name in names:
        found = tokenizer.token_to_id(name)
        if found is not None:
            return int(found)
    raise InputError(f"the tokenizer has no {' or '.join(names)} token: choose another replacement "
                     f"(delete, or a token id)")


@dataclass
class TextExplanation:
    """One text's explanation.

    tokens: the token strings (words, after merging). relevance: (len(tokens),) float64, the
    relevance of each (summed over every embedding source: word, position, token type).
    special: True for the tokenizer's special tokens ([CLS], [SEP], padding). sequence: 0 for
    the text, 1 for the text pair, -1 for special tokens. spans: (start, end) of each in its
    text (None for special tokens). pieces: the token positions each entry sums.
    output: the model's output for this text; mask: the target mask put on it (the relevance at
    the output is output * mask); target: the explained class (None for a mask target);
    score: the relevance put on the output, sum(output * mask). feeds: the model inputs (1-D per
    input) that were run; sources: {source: per-token relevance} as ``Explanation.sources``.
    """

    tokens: List[str]
    relevance: np.ndarray
    special: np.ndarray
    sequence: np.ndarray
    spans: List[Optional[Tuple[int, int]]]
    pieces: List[Tuple[int, ...]]
    output: np.ndarray
    mask: np.ndarray
    target: Optional[int]
    score: float
    feeds: Dict[str, np.ndarray] = field(default_factory=dict)
    sources: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def conservation(self) -> float:
        """sum of the token relevance / the relevance put on the output."""
        return float(self.relevance.sum()) / self.score if self.score else float("nan")


def _token_inputs(explainer) -> List[str]:
    names = [i.name for i in explainer.inputs]
    unknown = [n for n in names if n not in TOKEN_INPUTS]
    if unknown or "input_ids" not in names:
        raise InputError(f"the model's inputs {names} are not what a tokenizer gives: a text model takes "
                         f"input_ids and optionally attention_mask and token_type_ids")
    return names


def _encode(explainer, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[Optional[str]]]):
    """The tokenizer's encodings of ``texts`` (with ``pairs``) and {input: 1-D array} per text."""
    names = _token_inputs(explainer)
    dtypes = {i.name: i.dtype for i in explainer.inputs}
    for text in list(texts) + [p for p in pairs or () if p is not None]:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"a text to explain must be a non-empty string, got {text!r}")
    pairs = list(pairs) if pairs is not None else [None] * len(texts)
    if len(pairs) != len(texts):
        raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs")
    encodings = [tokenizer.encode(t) if p is None else tokenizer.encode(t, p) for t, p in zip(texts, pairs)]
    feeds = [{n: np.asarray(getattr(e, TOKEN_INPUTS[n]), dtype=dtypes[n]) for n in names} for e in encodings]
    return encodings, feeds


def _one_hot(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The mask of class ``target`` per sample (at the last position of a sequence output)."""
    mask = np.zeros_like(output, dtype=np.float32)
    n = np.arange(len(output))
    if output.ndim == 3:
        mask[n, -1, target] = 1.0
    else:
        mask.reshape(len(output), -1)[n, target] = 1.0
    return mask


def _batches(feeds: List[Dict[str, np.ndarray]], batch_size: int):
    """(sample indices, {input: stacked arrays}) of at most ``batch_size`` samples of one token
    length each: no padding, so that each sample runs exactly as it would alone."""
    by_length: Dict[int, List[int]] = {}
    for i, f in enumerate(feeds):
        by_length.setdefault(len(f["input_ids"]), []).append(i)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            rows = group[start:start + batch_size]
            yield rows, {k: np.stack([feeds[i][k] for i in rows]) for k in feeds[rows[0]]}


def _explain_feeds(explainer, feeds: List[Dict[str, np.ndarray]], targets, batch_size: int):
    """(output, mask, target, relevance, sources) of every sample, in order. targets: None, an
    int, or one mask per sample."""
    masks = None if targets is None or np.ndim(targets) == 0 else [np.asarray(m, np.float32) for m in targets]
    if masks is not None and len(masks) != len(feeds):
        raise InputError(f"{len(feeds)} texts but {len(masks)} target masks")
    results = [None] * len(feeds)
    for rows, batch in _batches(feeds, batch_size):
        target = targets if masks is None else np.stack([masks[i] for i in rows])
        res = explainer.explain(batch, target=target)
        mask = target if masks is not None else _one_hot(res.output, res.target)
        for j, i in enumerate(rows):
            results[i] = (res.output[j], mask[j], None if res.target is None else int(res.target[j]),
                          res.relevance[j], {k: v[j] for k, v in res.sources.items()})
    return results


def explain_texts(explainer, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[Optional[str]]] = None,
                  target=None, merge_words: bool = False, batch_size: int = 32) -> List[TextExplanation]:
    """``explain_text`` of many texts: target None, an int, or one mask per text (each shaped
    like one sample's output). Texts of one token length run ``batch_size`` at a time."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    encodings, feeds = _encode(explainer, tokenizer, texts, pairs)
    explained = []
    for i, (e, f, (output, mask, target_class, relevance, sources)) in enumerate(zip(
            encodings, feeds, _explain_feeds(explainer, feeds, target, batch_size))):
        special = np.asarray(e.special_tokens_mask, bool) | (np.asarray(e.attention_mask) == 0)
        sequence = np.array([-1 if s or q is None else q for s, q in zip(special, e.sequence_ids)])
        spans = [None if q < 0 else tuple(o) for q, o in zip(sequence, e.offsets)]
        score = float((output.astype(np.float64) * mask).sum())
        result = TextExplanation(list(e.tokens), relevance.astype(np.float64), special, sequence, spans,
                                 [(k,) for k in range(len(e.tokens))], output, mask, target_class, score, f,
                                 {k: v.astype(np.float64) for k, v in sources.items()})
        if merge_words:
            result = _merge(result, e.word_ids, (texts[i], pairs[i] if pairs is not None else None))
        explained.append(result)
    return explained


def explain_text(explainer, tokenizer, text: str, text_pair: Optional[str] = None, target=None,
                 merge_words: bool = False) -> TextExplanation:
    """Explain ``text`` (with ``text_pair``, encoded as the tokenizer's pair) with ``explainer``
    (an ``Explainer`` of a token model). target: None (the predicted class; for a causal LM,
    the next token after the text), a class index, or a mask shaped like the model's output
    for one text (relevance at the output = output * mask). merge_words: sum word pieces."""
    mask = None if target is None or np.ndim(target) == 0 else [target]
    return explain_texts(explainer, tokenizer, [text], None if text_pair is None else [text_pair],
                         target if mask is None else mask, merge_words)[0]


def _word_groups(tokens: Sequence[str], special, sequence, word_ids) -> List[List[int]]:
    """Token positions grouped into words: a special token alone; otherwise a new word where
    the sequence or the tokenizer's word id changes or a piece starts with a word marker."""
    groups: List[List[int]] = []
    previous = None
    for i, (token, is_special, seq, word) in enumerate(zip(tokens, special, sequence, word_ids)):
        key = None if is_special or word is None else (seq, word)
        if key is None or key != previous or token.startswith(WORD_START_MARKERS):
            groups.append([i])
        else:
            groups[-1].append(i)
        previous = key
    return groups


def _merge(result: TextExplanation, word_ids, texts: Tuple[str, Optional[str]]) -> TextExplanation:
    """``result`` with its word pieces summed into words (each word's text is its span)."""
    groups = _word_groups(result.tokens, result.special, result.sequence, word_ids)
    tokens, spans = [], []
    for g in groups:
        seq = result.sequence[g[0]]
        if seq < 0:
            tokens.append(result.tokens[g[0]])
            spans.append(None)
        else:
            span = (min(result.spans[i][0] for i in g), max(result.spans[i][1] for i in g))
            tokens.append(texts[seq][span[0]:span[1]])
            spans.append(span)
    summed = lambda r: np.array([r[g].sum() for g in groups])   # noqa: E731
    return dataclasses.replace(
        result, tokens=tokens, relevance=summed(result.relevance), special=result.special[[g[0] for g in groups]],
        sequence=result.sequence[[g[0] for g in groups]], spans=spans,
        pieces=[tuple(p for i in g for p in result.pieces[i]) for g in groups],
        sources={k: summed(v) for k, v in result.sources.items()})


# --- similarity ------------------------------------------------------------------------------

@dataclass
class Similarity:
    """cos(e_A, e_B) and the relevance of each sentence's tokens (see ``explain_similarity``)."""

    score: float
    a: TextExplanation
    b: TextExplanation


_FORWARD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def embed(explainer, feeds: List[Dict[str, np.ndarray]], batch_size: int = 32) -> List[np.ndarray]:
    """The model's output for each sample, from a forward-only onnxruntime session of the
    explainer's canonical model (cached per explainer), samples of one length batched."""
    from .explainer import create_session

    if explainer not in _FORWARD:
        _FORWARD[explainer] = create_session(explainer.forward_model, explainer.providers)
    session = _FORWARD[explainer]
    output = session.get_outputs()[0].name
    out = [None] * len(feeds)
    for rows, batch in _batches(feeds, batch_size):
        for i, row in zip(rows, session.run([output], batch)[0]):
            out[i] = row
    return out


def explain_similarities(explainer, tokenizer, pairs: Sequence[Tuple[str, str]], merge_words: bool = False,
                         batch_size: int = 32) -> List[Similarity]:
    """``explain_similarity`` of many (a, b) pairs, batched."""
    if not pairs:
        raise InputError("no sentence pairs to explain")
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    _, feeds = _encode(explainer, tokenizer, a + b, None)
    e = [np.asarray(v, np.float64) for v in embed(explainer, feeds, batch_size)]
    if e[0].ndim != 1:
        raise InputError(f"similarity needs a sentence-embedding model, output (N, H); this one gives one "
                         f"output of shape {e[0].shape} per text")
    n = len(pairs)
    norms = [float(np.linalg.norm(v)) for v in e]
    if min(norms) == 0:
        raise InputError("an embedding is zero: its cosine similarity is undefined")
    # explain e_A with e_B / (|e_A| |e_B|) as the mask (and B with A's): output * mask sums to cos
    masks = [e[n + i] / (norms[i] * norms[n + i]) for i in range(n)] + [e[i] / (norms[i] * norms[n + i]) for i in range(n)]
    explained = explain_texts(explainer, tokenizer, a + b, None, masks, merge_words, batch_size)
    return [Similarity(float(e[i] @ e[n + i]) / (norms[i] * norms[n + i]), explained[i], explained[n + i])
            for i in range(n)]


def explain_similarity(explainer, tokenizer, a: str, b: str, merge_words: bool = False) -> Similarity:
    """The cosine similarity of the embeddings of ``a`` and ``b``, explained per token.

    score = cos(e_A, e_B) = e_A · e_B / (|e_A| |e_B|) (e = the model's output: for
    sentence-transformers models already L2-normalized, then score = e_A · e_B). The relevance
    of A's tokens is the model's LRP explanation of e_A with e_B held fixed: the target mask
    is e_B / (|e_A| |e_B|), so the relevance put on the output is e_A ⊙ e_B / (|e_A| |e_B|),
    summing to the score; B's tokens likewise with e_A fixed. This is the first-order
    decomposition of the dot product (each embedding dimension's product, explained through
    one sentence's network at a time); BiLRP (Eberle et al., "Building and Interpreting Deep
    Similarity Models", IEEE TPAMI 2022) is the second-order alternative that explains pairs
    of tokens (one from each sentence) jointly.
    """
    return explain_similarities(explainer, tokenizer, [(a, b)], merge_words)[0]


def is_embedding_model(explainer) -> bool:
    """Whether the model gives a sentence embedding (N, H): its metadata says task "embedding"
    (``exporters.huggingface`` writes it), or, without that key, its output is named
    ``*embedding*``."""
    model = explainer.forward_model
    meta = {p.key: p.value for p in model.metadata_props}
    if "task" in meta:
        return meta["task"] == "embedding"
    return "embedding" in model.graph.output[0].name.lower()


def describe_target(result: TextExplanation, tokenizer) -> str:
    """What was explained: "class K (score s)", for a causal LM "next token 'x' (id K, logit s)",
    or "a target mask (score s)"."""
    if result.target is None:
        return f"a target mask (score {result.score:.4g})"
    if result.output.ndim == 2:
        return f"next token {tokenizer.id_to_token(result.target)!r} (id {result.target}, logit {result.score:.4g})"
    return f"class {result.target} (score {result.score:.4g})"
