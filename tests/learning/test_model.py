import collections
import itertools
import json
import math
import pickle
import zlib
from typing import Any

import pytest
from river.base import Classifier

from middleware.learning.model import (
    CANDIDATES,
    DEFAULT_MODEL,
    DIGEST_PREFIX,
    HashedTFIDF,
    _bucket_counts,
    _ngrams,
    learn,
    make_model,
    predict,
    text_digest,
)
from middleware.scoring.features import (
    READ_HEAD_CHARS,
    READ_TAIL_CHARS,
    ExchangeView,
    features,
    read,
    without_text,
    words,
)

TOPICS = [
    ("What is the capital of France?", "Paris"),
    ("What is the boiling point of water?", "100 degrees Celsius at sea level"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("What is the tallest mountain?", "Mount Everest"),
    ("What is the largest ocean?", "The Pacific Ocean"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many continents are there?", "Seven"),
    ("What gas do plants absorb?", "Carbon dioxide"),
]
HEDGES = [
    "I'm not sure, maybe it could be {a}...",
    "I'm not sure, maybe it is {a}, but it could be something else.",
    "Maybe {a}? I'm not sure, it could be.",
    "I'm not sure. It could be {a}, maybe.",
    "Hmm, maybe it could be {a}, I'm not sure...",
]
PLAINS = ["{a}.", "It is {a}.", "The answer is {a}.", "{a}, according to the usual sources."]
NEW_QUESTION = "In what year did the Berlin Wall fall?"
NEW_HEDGING = "I'm not sure, maybe it could be 1989, or maybe not."
NEW_PLAIN = "The Berlin Wall fell in 1989."


def x_of(question: str, reply: str) -> dict[str, Any]:
    return features(ExchangeView(question=question, reply=reply))


def stream(n: int = 40) -> list[tuple[dict[str, Any], bool]]:
    """n thumbs-down on hedging replies and n thumbs-up on plain ones, interleaved."""
    out = []
    for i, ((question, answer), hedge, plain) in enumerate(
        zip(itertools.cycle(TOPICS), itertools.cycle(HEDGES), itertools.cycle(PLAINS))
    ):
        if i == n:
            break
        out.append((x_of(question, hedge.format(a=answer)), False))
        out.append((x_of(question, plain.format(a=answer)), True))
    return out


@pytest.fixture(scope="module")
def trained() -> Classifier:
    model = make_model()
    for x, y in stream():
        learn(model, x, y, 1.0)
    return model


def test_default_is_a_candidate() -> None:
    assert DEFAULT_MODEL in CANDIDATES


def test_unknown_model_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="logreg-adagrad"):
        make_model("no-such-model")


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_every_candidate_predicts_probabilities_learns_and_snapshots(name: str) -> None:
    model = make_model(name)
    probe = x_of(NEW_QUESTION, NEW_PLAIN)
    assert 0.0 <= predict(model, probe) <= 1.0
    for x, y in stream(30):
        learn(model, x, y, 1.0)
    probes = [probe, x_of(NEW_QUESTION, NEW_HEDGING), x_of("", "")]
    scores = [predict(model, x) for x in probes]
    assert all(0.0 <= s <= 1.0 for s in scores)
    restored = pickle.loads(pickle.dumps(model))
    # river's Select keeps its keys in a set, which a pickle may rebuild in another
    # order (PYTHONHASHSEED=20 does): the same sum, added up in another order.
    assert [predict(restored, x) for x in probes] == pytest.approx(scores, abs=1e-12)
    # A feature dict stored as JSON and read back scores the same.
    assert [predict(model, json.loads(json.dumps(x))) for x in probes] == scores


def test_predict_does_not_change_the_model(trained: Classifier) -> None:
    before = pickle.dumps(trained)
    for x, _ in stream(5):
        predict(trained, x)
    assert pickle.dumps(trained) == before


@pytest.mark.parametrize(
    ("question", "hedging", "plain"),
    [
        (NEW_QUESTION, NEW_HEDGING, NEW_PLAIN),
        # hedges the training stream never used, on a new topic
        (NEW_QUESTION, "Perhaps it was 1989? I don't really know.", "It fell in 1989."),
        (
            "What is the capital of Australia?",
            "I think it might be Canberra, probably.",
            "Canberra is the capital of Australia.",
        ),
    ],
)
def test_fast_learner_hedging_scores_below_plain(
    trained: Classifier, question: str, hedging: str, plain: str
) -> None:
    """40 thumbs-down on hedging and 40 thumbs-up on plain replies are enough (issue 3)."""
    hedging_score = predict(trained, x_of(question, hedging))
    plain_score = predict(trained, x_of(question, plain))
    assert plain_score - hedging_score >= 0.15, (hedging_score, plain_score)


def test_untrained_model_has_no_opinion() -> None:
    model = make_model()
    assert predict(model, x_of(NEW_QUESTION, NEW_HEDGING)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("name", "warm"),
    [(DEFAULT_MODEL, False), (DEFAULT_MODEL, True), ("logreg-sgd", True), ("naive-bayes", True)],
)
def test_weight_three_moves_the_score_more_than_weight_one(name: str, warm: bool) -> None:
    model = make_model(name)
    if warm:
        for x, y in stream(10):
            learn(model, x, y, 1.0)
    x = x_of(NEW_QUESTION, "1989, I think.")
    start = predict(model, x)
    once, thrice = pickle.loads(pickle.dumps(model)), pickle.loads(pickle.dumps(model))
    learn(once, x, False, 1.0)
    learn(thrice, x, False, 3.0)
    moved_once = start - predict(once, x)
    moved_thrice = start - predict(thrice, x)
    assert 0 < moved_once < moved_thrice, (start, moved_once, moved_thrice)


def test_a_model_that_saw_one_class_only_says_so() -> None:
    model = make_model("naive-bayes")
    learn(model, x_of(NEW_QUESTION, NEW_HEDGING), False, 1.0)
    assert predict(model, x_of(NEW_QUESTION, NEW_HEDGING)) < 0.5


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_weight_must_be_positive(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        learn(make_model(), x_of("q", "r"), True, weight)


def test_hashed_words_are_stable_and_bounded() -> None:
    vectorizer = HashedTFIDF(on="reply", ngram_range=(1, 2), n_buckets=8)
    x = {"reply": "one two three four five six seven eight nine ten eleven"}
    vectorizer.learn_one(x)
    keys = vectorizer.transform_one(x)
    assert len(keys) <= 8
    assert f"reply#{zlib.crc32(b'one two') % 8}" in keys  # the same bucket in every process
    assert sum(v * v for v in keys.values()) == pytest.approx(1.0)


LONG_REPLY = (
    "Paris is the capital of France. " * 30
    + "Maybe, I'm not sure. I can't say. " * 40
    + "Its population is about two million people. " * 12
)


@pytest.mark.parametrize("text", [NEW_HEDGING, LONG_REPLY, "naïve café, it\u2019s ok. " * 80])
def test_buckets_are_crc32_of_the_words_and_pairs_read(text: str) -> None:
    # The chained crc32 of a pair is the crc32 of the joined pair, as before.
    grams = list(_ngrams(text, (1, 2)))
    expected = collections.Counter(zlib.crc32(g.encode()) % 1024 for g in grams)
    assert dict(_bucket_counts(text, (1, 2), 1024)) == dict(expected)
    vectorizer = HashedTFIDF(on="reply", ngram_range=(1, 2), n_buckets=1024)
    assert all(vectorizer.bucket(g) == zlib.crc32(g.encode()) % 1024 for g in grams)


def test_a_long_texts_digest_counts_the_part_read_and_learns_the_same() -> None:
    x = x_of(NEW_QUESTION, LONG_REPLY)
    digest = text_digest(x)["~reply"]
    assert digest["read"] == [READ_HEAD_CHARS, READ_TAIL_CHARS]
    counted = sum(digest["1"][1::2])
    assert counted == len(read(LONG_REPLY).tokens) < len(words(LONG_REPLY))
    from_text, from_digest = make_model(), make_model()
    purged = {**without_text(x), **text_digest(x)}
    for _ in range(3):
        learn(from_text, x, False, 1.0)
        learn(from_digest, purged, False, 1.0)
    assert predict(from_text, x) == predict(from_digest, x)


def test_an_old_digest_of_the_whole_text_is_read_as_its_counts() -> None:
    # Made before the bound: crc32 counts of every word and pair, no "read".
    seq = words(LONG_REPLY)
    flat = {
        n: collections.Counter(
            zlib.crc32(" ".join(seq[i : i + n]).encode()) % 65536 for i in range(len(seq) - n + 1)
        )
        for n in (1, 2)
    }
    old = {
        "buckets": 65536,
        **{str(n): [v for kv in c.items() for v in kv] for n, c in flat.items()},
    }
    vectorizer = HashedTFIDF(on="reply", ngram_range=(1, 2))
    _, buckets, counts = vectorizer._terms({"reply": "", DIGEST_PREFIX + "reply": old})
    assert dict(zip(buckets, counts, strict=True)) == dict(flat[1] + flat[2])


def test_the_tfidf_kept_logarithms_follow_learning_and_pickles() -> None:
    # Scoring reads ln(1 + df) kept beside the document frequencies; it must give what
    # the formula gives from the frequencies themselves, after learning and after a
    # snapshot (the kept logarithms are not pickled, they are rebuilt).
    vectorizer = HashedTFIDF(on="reply", ngram_range=(1, 2))
    texts = ["the reset link is in the e-mail", "the e-mail never came", "try the link again"]
    for text in texts:
        vectorizer.learn_one({"reply": text})
    x = {"reply": "the link in the e-mail"}

    def by_formula(model: HashedTFIDF) -> dict[str, float]:
        _, buckets, counts = model._terms(x)
        n = 1 + model.n_docs
        weights = [
            c * (math.log(n / (1 + model.dfs.get(b, 0))) + 1)
            for b, c in zip(buckets, counts, strict=True)
        ]
        norm = math.sqrt(sum(w * w for w in weights))
        return {model.key(b): w / norm for b, w in zip(buckets, weights, strict=True)}

    for model in (vectorizer, pickle.loads(pickle.dumps(vectorizer))):
        got, want = model.transform_one(x), by_formula(model)
        assert got.keys() == want.keys()
        assert all(math.isclose(got[k], want[k], rel_tol=1e-12) for k in want)
    assert "_logs" not in pickle.loads(pickle.dumps(vectorizer)).__dict__
