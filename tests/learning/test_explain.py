"""Why a reply scored as it did: the parts add up to the live model's log-odds, follow
its learned weights, and read as plain words for a reviewer."""

from __future__ import annotations

import math
import pickle

import pytest
from river.base import Classifier

from middleware.learning.brain import Brain
from middleware.learning.explain import STOP_WORDS, TRAITS, contributions, reasons
from middleware.learning.model import learn, make_model, predict
from middleware.scoring.features import read, words
from tests.learning.test_model import (
    LONG_REPLY,
    NEW_HEDGING,
    NEW_PLAIN,
    NEW_QUESTION,
    stream,
    x_of,
)
from tests.learning.test_model import trained as trained


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize(
    "reply", [NEW_HEDGING, NEW_PLAIN, "", "the the the and", "x " * 300, LONG_REPLY]
)
def test_the_parts_and_the_intercept_add_up_to_the_log_odds(
    trained: Classifier, reply: str
) -> None:
    x = x_of(NEW_QUESTION, reply)
    e = contributions(trained, x)
    assert e is not None
    total = e.intercept + sum(v for _, v in e.tokens) + sum(v for _, v in e.features)
    assert total == pytest.approx(e.log_odds, abs=1e-9)
    p = predict(trained, x)
    if 1e-12 < p < 1 - 1e-12:  # else the score is 0 or 1 to the last bit
        assert e.log_odds == pytest.approx(logit(p), abs=1e-6)
    assert e.score == pytest.approx(predict(trained, x), abs=1e-9)
    # The heatmap's words share out exactly the reply's words and word pairs.
    assert sum(v for _, v in e.words) == pytest.approx(sum(v for _, v in e.tokens), abs=1e-9)
    assert [w for w, _ in e.words] == words(reply)


def test_the_words_a_long_reply_was_not_read_for_have_no_share(trained: Classifier) -> None:
    e = contributions(trained, x_of(NEW_QUESTION, LONG_REPLY))
    assert e is not None
    reading = read(LONG_REPLY)
    head, tail = len(reading.head), len(reading.tail)
    assert head and tail and head + tail < len(e.words)
    middle = e.words[head : len(e.words) - tail]
    assert middle and all(value == 0.0 for _, value in middle)
    assert any(value != 0.0 for _, value in e.words[:head])
    assert any(value != 0.0 for _, value in e.words[len(e.words) - tail :])
    assert "not sure" not in dict(e.tokens)  # only in the middle


def test_each_list_is_strongest_first(trained: Classifier) -> None:
    e = contributions(trained, x_of(NEW_QUESTION, NEW_HEDGING))
    assert e is not None
    for items in (e.tokens, e.features):
        magnitudes = [abs(v) for _, v in items]
        assert magnitudes == sorted(magnitudes, reverse=True)


def test_contributions_flip_sign_with_the_learned_weights(trained: Classifier) -> None:
    x = x_of(NEW_QUESTION, NEW_HEDGING)
    flipped = pickle.loads(pickle.dumps(trained))
    final = list(flipped.steps.values())[-1]
    for key in list(final._weights):
        final._weights[key] = -final._weights[key]
    final.intercept = -final.intercept
    before, after = contributions(trained, x), contributions(flipped, x)
    assert before is not None and after is not None
    assert dict(after.tokens) == pytest.approx({k: -v for k, v in before.tokens})
    assert dict(after.features) == pytest.approx({k: -v for k, v in before.features})
    assert after.log_odds == pytest.approx(-before.log_odds)


def test_hedging_words_pull_a_hedging_reply_down(trained: Classifier) -> None:
    e = contributions(trained, x_of(NEW_QUESTION, NEW_HEDGING))
    assert e is not None
    shares = dict(e.tokens)
    assert shares["not sure"] < 0 and shares["maybe"] < 0


def test_a_model_that_is_not_linear_has_no_explanation() -> None:
    model = make_model("naive-bayes")
    learn(model, x_of(NEW_QUESTION, NEW_PLAIN), True, 1.0)
    assert contributions(model, x_of(NEW_QUESTION, NEW_HEDGING)) is None


def test_the_card_reasons_are_meaningful_words_and_traits(trained: Classifier) -> None:
    e = contributions(trained, x_of(NEW_QUESTION, NEW_HEDGING))
    assert e is not None
    found = reasons(e, top=5)
    assert 1 <= len(found) <= 5
    shares = [v for _, v in found]
    assert all(v < 0 for v in shares) and shares == sorted(shares)
    for name, _ in found:
        if name.startswith("the words"):
            quoted = name.split("\u201c", 1)[1].rstrip("\u201d")
            assert not all(w in STOP_WORDS for w in quoted.split()), name
        else:
            assert name in TRAITS.values(), name
    assert any("not sure" in name or "maybe" in name for name, _ in found), found


def test_a_reply_of_stop_words_gives_no_word_reasons() -> None:
    model = make_model()
    for _ in range(20):
        learn(model, x_of("q", "the and of the"), False, 1.0)
        learn(model, x_of("q", "Paris is the capital"), True, 1.0)
    e = contributions(model, x_of("q", "the and of the"))
    assert e is not None and dict(e.tokens)["the"] < 0
    assert not any(name.startswith("the words") for name, _ in reasons(e, top=10))


def test_the_brain_explains_in_plain_words_for_the_card() -> None:
    brain = Brain()
    for x, y in stream(20):
        learn(brain.model, x, y, 1.0)
    names = [name for name, _ in brain.explain(x_of(NEW_QUESTION, NEW_HEDGING))]
    assert names and all(n.startswith("the words \u201c") or n in TRAITS.values() for n in names)
