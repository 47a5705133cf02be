"""Token deletion on the pretrained all-MiniLM-L6-v2's sentence similarity (lrp_onnx.evaluate,
``token_deletion``): attnlrp, cp_lrp, gradient x input and random relevance. The relevance of a
token is the sum over its embedding lookups (word, position, token type; what explain_text
returns) or the word embedding's alone: gradient x input summed over the three is ~0 for every
token, since BERT's embedding LayerNorm makes the network invariant to scaling each token's
summed embedding (Euler: gradient . h = 0).

    .venv/bin/python benchmarks/text_faithfulness.py [--pairs 200] [--steps 10]
        [--replacement mask|unk|delete] [--out text_quality_out]

The sentence pairs are written here (``sentence_pairs``), deterministically: sentences
"<subject> is <activity> <place>." from 12 subjects, 12 activities and 10 places, each slot with
2-3 wordings of the same meaning; a pair is a paraphrase (every slot re-worded), a pair that
shares the subject and the place but not the activity, or two unrelated sentences, a third of
each, drawn with numpy's seeded generator (seed 0). Each pair gives two explained texts: A's
words with e_B fixed and B's with e_A fixed (text.explain_similarity); the score of a
perturbed A is cos(e_A', e_B). Words are removed whole (merged word pieces), most relevant first
(MoRF) or least (LeRF), [CLS] and [SEP] never. Gradient x input is the gradient of the full
model's cos(e_A, e_B) (through its final LpNormalization) times the embeddings. Writes
quality.md, quality.csv and curves.png (matplotlib) into --out and prints the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lrp_onnx import evaluate  # noqa: E402
from lrp_onnx.demo import minilm_export  # noqa: E402
from lrp_onnx.explainer import Explainer  # noqa: E402
from lrp_onnx.text import explain_similarities, load_tokenizer  # noqa: E402

#: Each slot: lists of wordings with one meaning.
SUBJECTS = [["A man", "A guy"], ["A woman", "A lady"], ["A child", "A kid", "A little boy"], ["A dog", "A puppy"],
            ["An old man", "An elderly gentleman"], ["A girl", "A young woman"], ["A chef", "A cook"],
            ["A student", "A pupil"], ["A cat", "A kitten"], ["A musician", "A performer"],
            ["A police officer", "A cop"], ["A group of friends", "Several friends"]]
ACTIVITIES = [["playing a guitar", "strumming a guitar"], ["reading a book", "reading a novel"],
              ["cooking dinner", "preparing a meal", "making supper"], ["riding a bicycle", "cycling on a bike"],
              ["eating an apple", "having an apple"], ["running fast", "sprinting"],
              ["painting a picture", "drawing a painting"], ["talking on the phone", "making a phone call"],
              ["sleeping", "taking a nap"], ["washing the car", "cleaning the car"],
              ["dancing to music", "dancing to a song"], ["writing a letter", "composing a letter"]]
PLACES = [["in the park", "at the park"], ["on the beach", "by the sea"], ["in the kitchen", "inside the kitchen"],
          ["on the street", "on the road"], ["in the garden", "in the backyard"], ["at school", "in a classroom"],
          ["in the office", "at work"], ["on a stage", "on the stage"], ["in the rain", "under the rain"],
          ["at night", "late in the evening"]]


def sentence_pairs(n: int = 200, seed: int = 0):
    """n distinct (a, b) pairs, a third paraphrases, a third with another activity, a third unrelated."""
    rng = np.random.default_rng(seed)

    def say(s, a, p, pick):
        return f"{SUBJECTS[s][pick[0] % len(SUBJECTS[s])]} is {ACTIVITIES[a][pick[1] % len(ACTIVITIES[a])]} " \
               f"{PLACES[p][pick[2] % len(PLACES[p])]}."

    pairs = []
    while len(pairs) < n:
        i = len(pairs)
        s, a, p = rng.integers(len(SUBJECTS)), rng.integers(len(ACTIVITIES)), rng.integers(len(PLACES))
        kind = i % 3
        if kind == 0:     # paraphrase: the same slots, every one re-worded
            other = (s, a, p)
        elif kind == 1:   # the same subject and place, another activity
            other = (s, (a + 1 + rng.integers(len(ACTIVITIES) - 1)) % len(ACTIVITIES), p)
        else:             # unrelated: every slot another
            other = tuple((v + 1 + rng.integers(m - 1)) % m
                          for v, m in zip((s, a, p), (len(SUBJECTS), len(ACTIVITIES), len(PLACES))))
        pair = (say(s, a, p, (0, 0, 0)), say(*other, (1, 1, 1)))
        if pair not in pairs:   # distinct pairs; a repeat is drawn again
            pairs.append(pair)
    return pairs


#: row label: (composite, relevance read at: "all" embeddings per token, or the "word" embedding only)
METHODS = {"attnlrp": ("attnlrp", "all"), "cp_lrp": ("cp_lrp", "all"),
           "attnlrp, word embedding only": ("attnlrp", "word"),
           "gradient x input (word embedding)": ("gradient_x_input", "word"),
           "gradient x input (all embeddings)": ("gradient_x_input", "all")}


def word_source(explainer) -> str:
    """The name of the word-embedding source: the lookup with the largest table."""
    return max((s for s in explainer.sources if s.is_embedding), key=lambda s: s.rows).name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--replacement", default="mask", choices=evaluate.TOKEN_REPLACEMENTS)
    parser.add_argument("--cache", default="demo_out", help="where the MiniLM export is cached (as `demo text`)")
    parser.add_argument("--out", default="text_quality_out")
    args = parser.parse_args(argv)

    path, folder = minilm_export(args.cache)
    tokenizer = load_tokenizer(folder)
    pairs = sentence_pairs(args.pairs)
    for a, b in pairs[:3]:
        print(f"  e.g. {a!r} / {b!r}")
    perturbation = evaluate.TokenPerturbation(steps=args.steps, replacement=args.replacement)
    results, explained_by, scores = {}, {}, None
    for label, (composite, read) in METHODS.items():
        start = time.perf_counter()
        if composite not in explained_by:
            explainer = Explainer(path, composite=composite)
            sims = explain_similarities(explainer, tokenizer, pairs, merge_words=True)
            explained_by[composite] = ([s.a for s in sims] + [s.b for s in sims], word_source(explainer))
            scores = np.array([s.score for s in sims])
        explained, word = explained_by[composite]
        # every row scores a perturbed text by cos(e_A', e_B): the normalized model's masks e_B
        reference = explained_by[METHODS["attnlrp"][0]][0]
        explained = [dataclasses.replace(e, mask=r.mask, relevance=e.sources[word] if read == "word" else e.relevance)
                     for e, r in zip(explained, reference)]
        results[label] = evaluate.token_deletion(path, explained, perturbation, tokenizer)
        print(f"{label}: explained and evaluated {len(explained)} texts in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    rng = np.random.default_rng(0)
    randomized = [dataclasses.replace(e, relevance=rng.standard_normal(len(e.relevance))) for e in explained]
    results["random"] = evaluate.token_deletion(path, randomized, perturbation, tokenizer)
    title = (f"all-MiniLM-L6-v2 similarity, {len(pairs)} pairs x 2 directions, words -> {args.replacement}, "
             f"{args.steps} steps")
    paths = evaluate.write_report(results, args.out, title, ylabel="cos(A', B) (B fixed)", xlabel="words removed (%)")
    print(f"{title}; cos over the pairs: mean {scores.mean():.3f}, min {scores.min():.3f}, max {scores.max():.3f}")
    print(evaluate.table_markdown(results), end="")
    print(f"wrote {paths['markdown']}, {paths['csv']}, {paths['plot']}")


if __name__ == "__main__":
    main()
