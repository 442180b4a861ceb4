"""Why a reply scored as it did: each part's share of the model's log-odds.

The default model is linear in its transformed features: the log-odds of "helpful" are
the intercept plus, for every feature the pipeline makes, its learned weight times its
value. The non-linear steps come *before* that sum (TF-IDF weighting and normalisation
of the reply's words, standard scaling of the numeric features, one-hot categories), so
each contribution is exact for the features as the model sees them: a word's share is
its weight times its TF-IDF value in this reply, a numeric trait's is its weight times
its scaled value, and the logistic function turns their sum into the score. Models that
are not linear (naive Bayes, trees) have no such sum: ``contributions`` says None.

Words are hashed into buckets; when two n-grams of one reply share a bucket, the
bucket's contribution is split between them by their counts, so the parts still add up.

Of a long reply the model reads only its start and its end (``features.read``): the
words in between have no contribution, and in ``words`` (which still lists every word
of the reply, in order) they get 0.0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from river import base, compose, linear_model

from middleware.learning.model import HashedTFIDF
from middleware.scoring.features import read, words

#: plain-language names of the numeric traits, for reviewers
TRAITS: dict[str, str] = {
    "reply_words": "reply length (words)",
    "reply_chars": "reply length (characters)",
    "question_words": "question length",
    "hedges": "hedging (\u201cnot sure\u201d, \u201cI think\u201d)",
    "refusals": "refusing to answer",
    "apologies": "apologising",
    "echo": "repeating the question",
    "self_repeat": "repeating itself",
    "reply_is_question": "answering with a question",
    "word_variety": "variety of words",
    "non_alpha": "symbols and digits",
    "tool_calls": "tool calls",
    "finish_length": "cut off at the length limit",
    "logprob_mean": "the model's own certainty (log-probabilities)",
    "has_logprob": "log-probabilities present",
    "retrieval_score": "match with the knowledge base",
    "has_retrieval": "knowledge-base match present",
    "user_rate": "this user's past thumbs-up rate",
    "user_logit": "this user's past thumbs-up rate (log-odds)",
    "user_votes": "how often this user voted",
    "user_known": "a user who voted before",
}

_STOP = """
a about above after all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in
into is it it's its itself just me more most my myself of off on once or other our
ours ourselves out over own same she should so some such than that that's the their
theirs them themselves then there these they this those through to too under until
up was we were what when where which while who whom why will with would you your
yours yourself yourselves i'm you're it's we're they're i've you've i'd you'd i'll
you'll let's s t
"""
#: words that carry no meaning on their own: never shown to a reviewer as a reason
STOP_WORDS = frozenset(_STOP.split())


@dataclass(frozen=True, slots=True)
class Explanation:
    """Shares of the log-odds: ``intercept + sum(tokens) + sum(features) == log_odds``."""

    score: float
    log_odds: float
    intercept: float
    #: the reply's words and word pairs, strongest (by magnitude) first
    tokens: list[tuple[str, float]]
    #: everything else: traits, categories (route, model), the question's words
    features: list[tuple[str, float]]
    #: each word of the reply in order with its share (its own, plus half of each word
    #: pair it is part of): what a heatmap shades; 0.0 for a word the model did not read
    words: list[tuple[str, float]]


def _strongest(items: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(items.items(), key=lambda kv: (-abs(kv[1]), kv[0]))


def _steps(model: compose.Pipeline) -> list[Any]:
    return list(model.steps.values())


def _hashers(step: Any) -> list[HashedTFIDF]:
    if isinstance(step, HashedTFIDF):
        return [step]
    if isinstance(step, compose.Pipeline):
        return [h for sub in step.steps.values() for h in _hashers(sub)]
    if isinstance(step, compose.TransformerUnion):
        return [h for sub in step.transformers.values() for h in _hashers(sub)]
    return []


def contributions(model: base.Classifier, x: dict[str, Any]) -> Explanation | None:
    """Every part's share of the log-odds of ``x`` under ``model`` now (None: not linear)."""
    if not isinstance(model, compose.Pipeline):
        return None
    *transforms, final = _steps(model)
    if not isinstance(final, linear_model.LogisticRegression):
        return None
    xt = x
    for step in transforms:
        xt = step.transform_one(xt)
    weights = final._weights
    share = {key: weights.get(key, 0.0) * float(value) for key, value in xt.items()}

    tokens: dict[str, float] = defaultdict(float)
    features: dict[str, float] = defaultdict(float)
    claimed: set[str] = set()
    for hasher in (h for t in transforms for h in _hashers(t)):
        grams = Counter(hasher.ngrams(x))
        by_key: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for gram, count in grams.items():
            by_key[hasher.key(hasher.bucket(gram))].append((gram, count))
        for key, members in by_key.items():
            if key not in share or key in claimed:
                continue
            claimed.add(key)
            total = sum(count for _, count in members)
            for gram, count in members:
                part = share[key] * count / total
                if hasher.on == "reply":
                    tokens[gram] += part
                else:
                    features[f"{hasher.on}: {gram}"] += part
    for key, value in share.items():
        if key in claimed:
            continue
        if key in TRAITS:
            features[TRAITS[key]] += value
        elif "#" in key:  # a purged text's words: counted, no longer readable
            features[f"{key.split('#', 1)[0]} words (text purged)"] += value
        else:
            features[key] += value  # a category, e.g. "route_chat"

    log_odds = final.intercept + sum(share.values())
    return Explanation(
        score=1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, log_odds)))),
        log_odds=log_odds,
        intercept=float(final.intercept),
        tokens=_strongest(tokens),
        features=_strongest(features),
        words=_per_word(str(x.get("reply") or ""), tokens),
    )


def _per_word(reply: str, tokens: dict[str, float]) -> list[tuple[str, float]]:
    """Each word of ``reply`` in order, with its share of the n-grams it belongs to; an
    n-gram's share is spread evenly over its occurrences (in the part read) and its
    words. Words outside the part the model read get 0.0."""
    seq = words(reply)
    reading = read(reply)
    head, tail = list(reading.head), list(reading.tail)
    # The part read is the first and the last words of the reply (cut at whitespace);
    # should a cut ever fall otherwise, only the words that line up are shaded.
    n_head = _common_prefix(seq, head)
    n_tail = _common_prefix(seq[n_head:][::-1], tail[::-1]) if tail else 0
    parts = [seq[:n_head]] + ([seq[len(seq) - n_tail :]] if n_tail else [])
    occurrences = Counter(word for part in parts for word in part)
    pairs = Counter(" ".join(part[i : i + 2]) for part in parts for i in range(len(part) - 1))
    out = [(word, 0.0) for word in seq]
    for offset, part in ((0, parts[0]), (len(seq) - n_tail, parts[-1] if n_tail else [])):
        for i, word in enumerate(part):
            value = tokens.get(word, 0.0) / occurrences[word]
            for pair in (" ".join(part[i - 1 : i + 1]) if i else "", " ".join(part[i : i + 2])):
                if pair.count(" ") == 1 and pair in tokens:
                    value += tokens[pair] / pairs[pair] / 2
            out[offset + i] = (word, value)
    return out


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


#: how a reason that quotes the reply's words begins (a purge drops those reasons)
WORDS_REASON = "the words \u201c"


def reasons(explanation: Explanation, *, top: int = 3) -> list[tuple[str, float]]:
    """The strongest words and traits pulling the score down, in plain language, for a
    review card, with their shares; words that mean nothing alone ("the", "and") are
    never a reason, nor are categories (the route or model, the same for most replies)."""
    against: list[tuple[str, float]] = []
    for token, value in explanation.tokens:
        if value < 0 and not all(part in STOP_WORDS for part in token.split()):
            against.append((f"{WORDS_REASON}{token}\u201d", value))
    traits = set(TRAITS.values())
    for name, value in explanation.features:
        if value < 0 and name in traits:
            against.append((name, value))
    against.sort(key=lambda kv: kv[1])
    return against[:top]


__all__ = ["STOP_WORDS", "TRAITS", "WORDS_REASON", "Explanation", "contributions", "reasons"]
