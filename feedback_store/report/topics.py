"""What users complain about: complaint questions clustered into named topics."""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from feedback_store.report.aggregates import user_votes
from feedback_store.report.rows import ReportRows

# A word is two or more word characters, with apostrophes inside it: "don't" stays one
# token (the default pattern cuts it to "don", which then names topics).
_WORD = r"(?u)\b\w(?:\w|'(?=\w))+\b"
_NOT = ("don", "doesn", "didn", "isn", "aren", "wasn", "weren", "won", "wouldn", "can",
        "couldn", "shouldn", "haven", "hasn", "hadn", "ain", "mustn", "needn")  # fmt: skip
_CONTRACTED = ("i'm", "i've", "i'll", "i'd", "you're", "you've", "you'll", "you'd",
               "it's", "it'll", "that's", "there's", "what's", "where's", "how's", "he's",
               "she's", "we're", "we've", "we'll", "they're", "they've", "let's")  # fmt: skip
# Contractions are grammar, not a subject: with the apostrophe, without it as people
# type them, and the stem an apostrophe-less split leaves ("don t"). Greetings stay
# words: a bot that answers "hi" badly is a topic.
_CONTRACTIONS = frozenset(
    {"ll", "ve", "im", "ive", "youre", "thats", "whats", "lets"}
    | {f"{stem}'t" for stem in _NOT}
    | {f"{stem}t" for stem in _NOT}
    | set(_NOT)
    | set(_CONTRACTED)
)


def _words(text: str) -> str:
    """Lower case, with typographic apostrophes made plain (U+2019 in "don\u2019t" is "'")."""
    return text.lower().replace("\u2019", "'").replace("\u02bc", "'")


def complaints(rows: ReportRows) -> list[tuple[str, str, str | None]]:
    """(reply id, question, reason) behind thumbs-down, rejected and corrected replies."""
    reasons: dict[str, str | None] = {}
    for v in user_votes(rows.votes):
        if v.rating == "down":
            reasons[v.reply_id] = v.reason
    for r in rows.reviews:
        if r.state in ("rejected", "corrected"):
            reasons.setdefault(r.reply_id, r.reason or r.state)
    return [
        (e.id, e.question.strip(), reasons[e.id])
        for e in rows.exchanges
        if e.id in reasons and e.question.strip()
    ]


def topics(
    items: Sequence[tuple[str, str, str | None]],
    *,
    max_topics: int = 8,
    examples: int = 3,
    terms: int = 3,
) -> list[dict[str, Any]]:
    """Cluster complaint questions (TF-IDF, then NMF) and name each cluster by its top terms.

    Each question joins the topic it weighs most on; questions with no usable word
    (only stop words, say) form an "(other)" topic.
    """
    if not items:
        return []
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

    docs = [question for _, question, _ in items]
    vectorizer = TfidfVectorizer(
        preprocessor=_words,
        token_pattern=_WORD,
        stop_words=sorted(ENGLISH_STOP_WORDS | _CONTRACTIONS),
        ngram_range=(1, 2),
        max_features=5000,
        sublinear_tf=True,
    )
    try:
        matrix = vectorizer.fit_transform(docs)
    except ValueError:  # an empty vocabulary: nothing but stop words
        return [_topic("(other)", list(range(len(items))), items, examples)]
    vocabulary = vectorizer.get_feature_names_out()
    distinct = len(set(docs))
    # NMF's nndsvda start needs no more topics than questions or words.
    k = max(1, min(max_topics, round(1.5 * math.sqrt(distinct)), matrix.shape[1], len(docs)))
    if k == 1:
        weights = np.ones((len(docs), 1))
    else:
        nmf = NMF(n_components=k, init="nndsvda", max_iter=400, random_state=0)
        # A rough factorisation is enough to group questions: neither an unconverged fit
        # nor the rounding that makes a tiny residual negative should stop a report.
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            weights = nmf.fit_transform(matrix)
    has_words = np.asarray(matrix.sum(axis=1)).ravel() > 0
    assigned = weights.argmax(axis=1)
    found = []
    for t in range(k):
        members = [i for i in range(len(docs)) if has_words[i] and assigned[i] == t]
        if not members:
            continue
        members.sort(key=lambda i: -weights[i, t])
        # Named by its members' mean TF-IDF: words its questions actually share.
        rows = matrix[members]
        centroid = np.asarray(rows.mean(axis=0)).ravel()
        # A name word must be shared: in at least a sixth of the topic's questions, so one
        # long question can't name a topic of short ones.
        shared = np.asarray((rows > 0).sum(axis=0)).ravel() >= max(1.0, len(members) / 6)
        order = [j for j in np.argsort(centroid)[::-1][: terms * 4] if centroid[j] > 0]
        top = [str(vocabulary[j]) for j in order if shared[j]] or [str(vocabulary[order[0]])]
        found.append(_topic(_name(top, terms), members, items, examples))
    rest = [i for i in range(len(docs)) if not has_words[i]]
    if rest:
        found.append(_topic("(other)", rest, items, examples))
    found.sort(key=lambda topic: -topic["count"])
    return found


def _name(top_terms: list[str], terms: int) -> str:
    """Top terms, skipping one inside a chosen phrase ("reset" after "reset password")."""
    chosen: list[str] = []
    for term in top_terms:
        words = set(term.split())
        if any(words <= set(c.split()) or set(c.split()) <= words for c in chosen):
            continue
        chosen.append(term)
        if len(chosen) == terms:
            break
    return ", ".join(chosen)


def _topic(
    label: str, members: list[int], items: Sequence[tuple[str, str, str | None]], examples: int
) -> dict[str, Any]:
    shown: list[str] = []
    seen: set[str] = set()
    for i in members:
        question = items[i][1]
        # "Hi)", "hi" and "Hi!" are one example, not three.
        key = " ".join(re.findall(r"\w+", question.lower()))
        if key in seen:
            continue
        seen.add(key)
        shown.append(question if len(question) <= 200 else question[:199] + "…")
        if len(shown) == examples:
            break
    reasons = Counter(items[i][2] or "unspecified" for i in members)
    return {
        "label": label,
        "count": len(members),
        "examples": shown,
        "reasons": dict(reasons.most_common()),
        "reply_ids": [items[i][0] for i in members[:examples]],
    }
