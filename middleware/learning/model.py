"""The helpfulness model: river pipelines over ``features()`` ending in a probabilistic classifier.

The default is a logistic regression over hashed TF-IDF words of the reply, the scaled
numeric features and the one-hot categories, fitted by AdaGrad. The question's own words
are left out of the default: they say what was asked, not whether the reply helped, and
when one question gets several replies (regenerations, n > 1, A/B tests) learning them
from one reply biases the next (on ConvAI 2017 they add nothing: 0.7409 against 0.7401).
Per-feature step sizes suit this mix of a few dense features and many rare words: a
word seen a handful of times still gets a real step, so a few dozen labels move the
score (the fast-learner requirement), and on the ConvAI 2017 stream it ranks best of
the candidates (``bench/learning_candidates.py`` prints the comparison).

Words are hashed (crc32, stable across processes and pickles) into a fixed number of
buckets, so vocabulary, weights and snapshots stay bounded. The transform reads the
bounded part of a long text the features read (``features.read``), so its cost stops
growing with the reply; a word pair's crc32 continues its first word's (the buckets of
crc32 over the joined pair: older models and digests stay valid). ``predict`` never
mutates the model, so a request can score against the live model or a snapshot.
"""

from __future__ import annotations

import collections
import functools
import inspect
import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from river import base, compose, forest, linear_model, naive_bayes, optim, preprocessing, tree

from middleware.scoring.features import (
    NUMERIC_KEYS,
    READ_HEAD_CHARS,
    READ_TAIL_CHARS,
    TEXT_KEYS,
    Reading,
    read,
)

__all__ = [
    "CANDIDATES",
    "DEFAULT_MODEL",
    "DIGEST_PREFIX",
    "HashedTFIDF",
    "learn",
    "make_model",
    "predict",
    "text_digest",
]

_CATEGORICAL_KEYS = ("route", "model", "finish_reason")
# Per text field; on ConvAI 2017 2**14 to 2**18 buckets score the same.
_BUCKETS = 1 << 16


def _grams(reading: Reading, n: int) -> Iterator[str]:
    for part in (reading.head, reading.tail):  # no word pair spans the gap between them
        for i in range(len(part) - n + 1):
            yield part[i] if n == 1 else " ".join(part[i : i + n])


def _ngrams(text: str, ngram_range: tuple[int, int]) -> Iterator[str]:
    """The n-grams of the part of ``text`` that is read (``features.read``)."""
    reading = read(text)
    for n in range(ngram_range[0], ngram_range[1] + 1):
        yield from _grams(reading, n)


# The crc32 of each word, and its bytes after a space: a word pair's crc32 is the second
# word's continued from the first's (crc32(b"a b") == crc32(b" b", crc32(b"a"))), so no
# pair is joined or encoded. Cleared when full: a bound, not an eviction order.
_WORD_CRCS: dict[str, tuple[int, bytes]] = {}
_WORD_CRCS_MAX = 1 << 16


def _crcs(tokens: tuple[str, ...]) -> list[tuple[int, bytes]]:
    memo = _WORD_CRCS
    out = []
    for token in tokens:
        entry = memo.get(token)
        if entry is None:
            if len(memo) >= _WORD_CRCS_MAX:
                memo.clear()
            data = token.encode()
            entry = memo[token] = (zlib.crc32(data), b" " + data)
        out.append(entry)
    return out


def _gram_buckets(reading: Reading, ngram_range: tuple[int, int], n_buckets: int) -> list[int]:
    """The bucket of every n-gram of ``reading``, words first, then pairs...: crc32 of the
    gram's UTF-8 (words joined by a space) modulo ``n_buckets``."""
    low, high = ngram_range
    crcs = [_crcs(part) for part in (reading.head, reading.tail)]
    out: list[int] = []
    for n in range(low, high + 1):
        for part, part_crcs in zip((reading.head, reading.tail), crcs, strict=True):
            if n == 1:
                out += [crc % n_buckets for crc, _ in part_crcs]
            elif n == 2:
                pairs = itertools.pairwise(part_crcs)
                out += [zlib.crc32(b[1], a[0]) % n_buckets for a, b in pairs]
            else:
                grams = (" ".join(part[i : i + n]) for i in range(len(part) - n + 1))
                out += [zlib.crc32(g.encode()) % n_buckets for g in grams]
    return out


# A reply is hashed when it is scored and again when its label is learned, often soon
# after: memoising the (pure) hashing saves most of the model's cost on the request path.
# ``Reading`` compares by identity, and ``read`` hands out the same one while it caches it.
@functools.lru_cache(maxsize=2048)
def _reading_counts(
    reading: Reading, ngram_range: tuple[int, int], n_buckets: int
) -> tuple[tuple[int, int], ...]:
    return tuple(collections.Counter(_gram_buckets(reading, ngram_range, n_buckets)).items())


def _bucket_counts(
    text: str, ngram_range: tuple[int, int], n_buckets: int
) -> tuple[tuple[int, int], ...]:
    """How often each bucket occurs among the hashed n-grams of the part of ``text`` read,
    in the order buckets first occur."""
    return _reading_counts(read(text), ngram_range, n_buckets)


#: where a purged exchange's ``features_json`` keeps its texts' hashed word counts
#: ("~reply": {"buckets": 65536, "read": [800, 400], "1": [bucket, count, ...], "2": [...]})
DIGEST_PREFIX = "~"
_DIGEST_NGRAMS = (1, 2)  # every HashedTFIDF here reads words, or words and word pairs


def text_digest(x: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What ``HashedTFIDF`` learns from ``x``'s texts, without the words: the hashed word
    and word-pair counts of the part of each text that is read, in the order they first
    occur (so that learning from them adds up exactly as from the text). A purge keeps
    it in place of the text.

    ``"read"`` records the part's bounds (head and tail characters, ``features.read``).
    Digests made before the bound have no ``"read"``: they count the whole text, with
    the same buckets (crc32 of the word or the space-joined pair), and are read as they
    are, counts like any other: relearning from one learns what the model learned from
    that text then, which for a text longer than the bound is more words than a model
    reads of it today."""
    digest: dict[str, dict[str, Any]] = {}
    for key in TEXT_KEYS:
        text = x.get(key)
        if isinstance(text, str) and text:
            entry: dict[str, Any] = {
                "buckets": _BUCKETS,
                "read": [READ_HEAD_CHARS, READ_TAIL_CHARS],
            }
            for n in _DIGEST_NGRAMS:
                pairs = _bucket_counts(text, (n, n), _BUCKETS)
                entry[str(n)] = [value for pair in pairs for value in pair]
            digest[DIGEST_PREFIX + key] = entry
    return digest


def _digest_counts(digest: Any, ngram_range: tuple[int, int], n_buckets: int) -> dict[int, int]:
    """The bucket counts ``_bucket_counts`` would give for the text ``digest`` was made of
    ({} when there is no digest, or it can't give them: other buckets, other n-grams).
    A digest without ``"read"`` (made from the whole text) is read the same way."""
    if not isinstance(digest, dict) or int(digest.get("buckets", 0)) % n_buckets:
        return {}
    counts: dict[int, int] = {}
    low, high = ngram_range
    for n in range(low, high + 1):
        flat = digest.get(str(n))
        if not isinstance(flat, list):
            return {}
        for i in range(0, len(flat) - 1, 2):
            bucket = int(flat[i]) % n_buckets
            counts[bucket] = counts.get(bucket, 0) + int(flat[i + 1])
    return counts


# Each prefix's feature names by bucket, made once (bounded by the buckets).
_KEYS: dict[str, dict[int, str]] = collections.defaultdict(dict)


def _keys(prefix: str, buckets: Iterable[int]) -> list[str]:
    names = _KEYS[prefix]
    out = []
    for bucket in buckets:
        name = names.get(bucket)
        if name is None:
            name = names[bucket] = f"{prefix}#{bucket}"
        out.append(name)
    return out


#: a text as a transform reads it: feature names, buckets and counts, in order
_Terms = tuple[tuple[str, ...], tuple[int, ...], tuple[float, ...]]


# Cached beside ``_reading_counts`` for the same reason: the request path scores a reply
# and the learner learns it soon after, and neither should name its buckets again.
@functools.lru_cache(maxsize=2048)
def _reading_terms(
    reading: Reading, ngram_range: tuple[int, int], n_buckets: int, prefix: str
) -> _Terms:
    return _terms_of(dict(_reading_counts(reading, ngram_range, n_buckets)), prefix)


def _terms_of(counts: dict[int, int], prefix: str) -> _Terms:
    return tuple(_keys(prefix, counts)), tuple(counts), tuple(map(float, counts.values()))


class HashedTFIDF(base.Transformer):
    """TF-IDF of the word n-grams of ``x[on]``, hashed into ``n_buckets`` keys ``"{prefix}#{b}"``.

    Of a long text it reads the start and the end (``features.read``), never a pair
    across the gap between them.
    With ``idf=False`` it yields raw counts (for naive Bayes). IDF is smoothed as in
    scikit-learn, ``ln((1 + n) / (1 + df)) + 1``, and rows are L2-normalised.
    """

    def __init__(
        self,
        on: str,
        prefix: str | None = None,
        ngram_range: tuple[int, int] = (1, 1),
        n_buckets: int = _BUCKETS,
        idf: bool = True,
    ) -> None:
        self.on = on
        self.prefix = on if prefix is None else prefix
        self.ngram_range = ngram_range
        self.n_buckets = n_buckets
        self.idf = idf
        self.n_docs = 0
        self.dfs: collections.Counter[int] = collections.Counter()

    def ngrams(self, x: dict[str, Any]) -> Iterator[str]:
        """The n-grams it reads of ``x[on]``, in the order it counts them."""
        text = x.get(self.on)
        return _ngrams(text if isinstance(text, str) else "", self.ngram_range)

    def bucket(self, ngram: str) -> int:
        return zlib.crc32(ngram.encode()) % self.n_buckets

    def key(self, bucket: int) -> str:
        return _keys(self.prefix, (bucket,))[0]

    def _terms(self, x: dict[str, Any]) -> _Terms:
        text = x.get(self.on)
        if not isinstance(text, str) or not text:
            # A purged exchange keeps what its text counted (``text_digest``).
            counts = _digest_counts(
                x.get(DIGEST_PREFIX + self.on), self.ngram_range, self.n_buckets
            )
            return _terms_of(counts, self.prefix)
        return _reading_terms(read(text), self.ngram_range, self.n_buckets, self.prefix)

    def _log_dfs(self) -> dict[int, float]:
        """``ln(1 + df)`` by bucket, kept beside ``dfs`` so that scoring takes no logarithm
        per word; left out of pickles (``__getstate__``) and rebuilt on first use."""
        logs: dict[int, float] | None = self.__dict__.get("_logs")
        if logs is None:
            logs = self.__dict__["_logs"] = {b: math.log1p(d) for b, d in self.dfs.items()}
        return logs

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_logs"}

    def learn_one(self, x: dict) -> None:
        if self.idf:
            self.n_docs += 1
            buckets = self._terms(x)[1]
            self.dfs.update(buckets)
            logs, dfs = self._log_dfs(), self.dfs
            for bucket in buckets:
                logs[bucket] = math.log1p(dfs[bucket])

    def transform_one(self, x: dict) -> dict:
        names, buckets, counts = self._terms(x)
        if not self.idf:
            return dict(zip(names, counts, strict=True))
        # ln((1 + n) / (1 + df)) + 1 as ln(1 + n) + 1 - ln(1 + df)
        base, logs = math.log1p(self.n_docs) + 1.0, self._log_dfs()
        weighted = [c * (base - logs.get(b, 0.0)) for b, c in zip(buckets, counts, strict=True)]
        scale = 1.0 / (math.hypot(*weighted) or 1.0)
        return dict(zip(names, [v * scale for v in weighted], strict=True))


class _Buckets(base.Transformer):
    """Numeric features as coarse tokens ("hedges=1"), so naive Bayes can count them."""

    def transform_one(self, x: dict) -> dict:
        return {f"{k}={round(float(x.get(k, 0.0)) * 4) / 4:g}": 1.0 for k in NUMERIC_KEYS}


def _numeric() -> compose.Pipeline:
    return compose.Select(*NUMERIC_KEYS) | preprocessing.StandardScaler()


def _categorical() -> compose.Pipeline:
    return compose.Select(*_CATEGORICAL_KEYS) | preprocessing.OneHotEncoder()


def _logreg(optimizer: optim.base.Optimizer, *, question_words: bool = True) -> base.Classifier:
    parts = [_numeric(), _categorical(), HashedTFIDF(on="reply", ngram_range=(1, 2))]
    if question_words:
        parts.append(HashedTFIDF(on="question"))
    union = compose.TransformerUnion(*parts)
    return cast(base.Classifier, union | linear_model.LogisticRegression(optimizer=optimizer))


def logreg_adagrad() -> base.Classifier:
    # eps keeps the first step on a new word proportional to the gradient, so a label's
    # sample weight still counts there (with eps ~ 0 AdaGrad's first step ignores it).
    return _logreg(optim.AdaGrad(0.2, eps=0.1))


def logreg_adagrad_reply() -> base.Classifier:
    # The question's words describe the user's turn, not the reply: when two replies to
    # the same question arrive together with opposite labels, what one teaches about the
    # question pushes the other the wrong way. This variant judges the reply's words only.
    return _logreg(optim.AdaGrad(0.2, eps=0.1), question_words=False)


def logreg_sgd() -> base.Classifier:
    return _logreg(optim.SGD(0.01))


def naive_bayes_words() -> base.Classifier:
    union = compose.TransformerUnion(
        _Buckets(),
        HashedTFIDF(on="reply", ngram_range=(1, 2), idf=False),
        HashedTFIDF(on="question", idf=False),
    )
    return cast(base.Classifier, union | naive_bayes.MultinomialNB(alpha=1.0))


def hoeffding_tree() -> base.Classifier:
    model = tree.HoeffdingAdaptiveTreeClassifier(grace_period=50, seed=1)
    return cast(base.Classifier, compose.Select(*NUMERIC_KEYS) | model)


def adaptive_forest() -> base.Classifier:
    model = forest.ARFClassifier(n_models=10, seed=1)
    return cast(base.Classifier, compose.Select(*NUMERIC_KEYS) | model)


CANDIDATES: dict[str, Callable[[], base.Classifier]] = {
    "logreg-adagrad": logreg_adagrad,
    "logreg-adagrad-reply": logreg_adagrad_reply,
    "logreg-sgd": logreg_sgd,
    "naive-bayes": naive_bayes_words,
    "hoeffding-tree": hoeffding_tree,
    "adaptive-forest": adaptive_forest,
}
DEFAULT_MODEL = "logreg-adagrad-reply"


def make_model(name: str = DEFAULT_MODEL) -> base.Classifier:
    try:
        factory = CANDIDATES[name]
    except KeyError:
        known = ", ".join(sorted(CANDIDATES))
        raise ValueError(f"unknown model {name!r}; choose one of: {known}") from None
    return factory()


def predict(model: base.Classifier, x: dict[str, Any]) -> float:
    """P(helpful). An untrained model answers what it answers; the caller applies the prior."""
    proba = model.predict_proba_one(cast(dict, x))
    if not proba:
        return 0.5
    # A model that has seen one class only may leave the other out of its answer.
    p = float(proba[True]) if True in proba else 1.0 - float(proba.get(False, 0.5))
    return min(max(p, 0.0), 1.0) if math.isfinite(p) else 0.5


def _final(model: base.Estimator) -> base.Estimator:
    if isinstance(model, compose.Pipeline):
        return list(model.steps.values())[-1]
    return model


@functools.cache
def _takes_weight(kind: type) -> bool:
    return "w" in inspect.signature(getattr(kind, "learn_one")).parameters  # noqa: B009


def learn(model: base.Classifier, x: dict[str, Any], y: bool, weight: float = 1.0) -> None:
    """Learn one label with a sample weight (reviewer labels weigh more than users')."""
    if not weight > 0:
        raise ValueError(f"weight must be positive (got {weight!r})")
    if _takes_weight(type(_final(model))):
        cast(Any, model).learn_one(x, bool(y), w=weight)
        return
    # Estimators without sample weights see the label as many times as it weighs.
    for _ in range(max(1, round(weight))):
        model.learn_one(cast(dict, x), bool(y))
