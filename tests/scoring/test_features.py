import json
import math

import pytest

from middleware.scoring.completion import content_text
from middleware.scoring.features import (
    NUMERIC_KEYS,
    READ_HEAD_CHARS,
    READ_TAIL_CHARS,
    ExchangeView,
    features,
    read,
    words,
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain text", "plain text"),
        (None, ""),
        ("", ""),
        ([{"type": "text", "text": "first"}, {"type": "text", "text": "second"}], "first\nsecond"),
        (
            [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "text", "text": "what is this?"},
            ],
            "what is this?",
        ),
        ([{"type": "text", "text": ""}, {"type": "text", "text": "x"}], "x"),
        ([], ""),
        ({"type": "text", "text": "a lone part"}, "a lone part"),
        (42, ""),
        ([{"type": "text", "text": None}], ""),
    ],
)
def test_content_text(content: object, expected: str) -> None:
    assert content_text(content) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm not sure.", ["i'm", "not", "sure"]),
        ("I\u2019m not sure", ["i'm", "not", "sure"]),
        ("Paris, France!", ["paris", "france"]),
        ("snake_case 42", ["snake", "case", "42"]),
        ("", []),
    ],
)
def test_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


HEDGING = "I'm not sure, maybe it could be Paris."
PLAIN = "The capital of France is Paris."

TABLE = [
    pytest.param(
        ExchangeView(question="", reply=""),
        {
            "reply": "",
            "question": "",
            "reply_words": 0.0,
            "reply_chars": 0.0,
            "question_words": 0.0,
            "non_alpha": 1.0,
            "word_variety": 0.0,
            "echo": 0.0,
            "hedges": 0.0,
            "refusals": 0.0,
            "apologies": 0.0,
        },
        id="empty",
    ),
    pytest.param(
        ExchangeView(question="What is the capital of France?", reply=PLAIN),
        {
            "reply": PLAIN,
            "question": "What is the capital of France?",
            "reply_words": math.log1p(6),
            "question_words": math.log1p(6),
            "reply_chars": math.log1p(len(PLAIN)),
            "hedges": 0.0,
            "refusals": 0.0,
            "reply_is_question": 0.0,
            "word_variety": 1.0,
        },
        id="plain",
    ),
    pytest.param(
        ExchangeView(question="Capital of France?", reply=HEDGING),
        {"hedges": 3.0, "refusals": 0.0},
        id="hedging: i'm not sure, maybe, could be",
    ),
    pytest.param(
        ExchangeView(question="", reply="I\u2019m not sure."),
        {"hedges": 1.0},
        id="curly apostrophe",
    ),
    pytest.param(
        ExchangeView(question="", reply="I think so. I don't know, perhaps."),
        {"hedges": 3.0},
        id="i think, i don't know, perhaps",
    ),
    pytest.param(
        ExchangeView(question="", reply="Maybelline thinks, unsurely."),
        {"hedges": 0.0},
        id="hedge words only as whole words",
    ),
    pytest.param(
        ExchangeView(question="", reply="I can't do that. As an AI language model, no."),
        {"refusals": 3.0, "hedges": 0.0},
        id="refusals",
    ),
    pytest.param(
        ExchangeView(question="", reply="I cannot help; I'm unable to."),
        {"refusals": 2.0},
        id="cannot, unable",
    ),
    pytest.param(
        ExchangeView(question="", reply="Sorry, I don't know."),
        {"apologies": 1.0, "hedges": 1.0, "refusals": 0.0},
        id="apology",
    ),
    pytest.param(
        ExchangeView(
            question="what is the capital of france", reply="What is the capital of France?"
        ),
        {"echo": 1.0, "reply_is_question": 1.0},
        id="echoes the question",
    ),
    pytest.param(
        ExchangeView(question="what is the capital of france", reply="Paris, of course"),
        {"echo": 1 / 3},
        id="partial echo",
    ),
    pytest.param(
        ExchangeView(
            question="hi",
            reply="hello there",
            history=(("assistant", "Hello there!"), ("user", "hi")),
        ),
        {"self_repeat": 1.0},
        id="repeats an earlier bot turn",
    ),
    pytest.param(
        ExchangeView(question="hi", reply="hello there", history=(("user", "hello there"),)),
        {"self_repeat": 0.0},
        id="user turns are not self-repetition",
    ),
    pytest.param(
        ExchangeView(question="", reply="yes yes yes no"),
        {"word_variety": 0.5},
        id="repetitive words",
    ),
    pytest.param(
        ExchangeView(question="", reply="\U0001f1f2 \U0001f1ff"),
        {"non_alpha": 1.0, "reply_words": 0.0},
        id="emoji only",
    ),
    pytest.param(
        ExchangeView(question="q", reply="r"),
        {
            "route": "chat",
            "model": "unknown",
            "finish_reason": "none",
            "finish_length": 0.0,
            "tool_calls": 0.0,
            "logprob_mean": 0.0,
            "has_logprob": 0.0,
            "retrieval_score": 0.0,
            "has_retrieval": 0.0,
        },
        id="defaults for missing signals",
    ),
    pytest.param(
        ExchangeView(
            question="q",
            reply="r",
            finish_reason="length",
            tool_calls=2,
            logprob_mean=-0.7,
            retrieval_score=0.42,
            route="support",
            model="gpt-4o-mini",
        ),
        {
            "route": "support",
            "model": "gpt-4o-mini",
            "finish_reason": "length",
            "finish_length": 1.0,
            "tool_calls": 2.0,
            "logprob_mean": -0.7,
            "has_logprob": 1.0,
            "retrieval_score": 0.42,
            "has_retrieval": 1.0,
        },
        id="upstream signals",
    ),
    pytest.param(
        ExchangeView(
            question="q", reply="r", logprob_mean=float("nan"), retrieval_score=float("inf")
        ),
        {"logprob_mean": 0.0, "has_logprob": 0.0, "retrieval_score": 0.0, "has_retrieval": 0.0},
        id="non-finite signals count as missing",
    ),
    pytest.param(
        ExchangeView(question="q", reply="r"),
        {
            "user_rate": 0.5,
            "user_logit": 0.0,
            "user_votes": 0.0,
            "user_known": 0.0,
        },
        id="unknown user is neutral",
    ),
    pytest.param(
        ExchangeView(question="q", reply="r", user_helpful_rate=1.0, user_votes=2),
        {
            "user_rate": 0.75,
            "user_logit": math.log(3),
            "user_votes": math.log1p(2),
            "user_known": 1.0,
        },
        id="pleased user, shrunk toward neutral",
    ),
    pytest.param(
        ExchangeView(question="q", reply="r", user_helpful_rate=0.0, user_votes=8),
        {
            "user_rate": 0.1,
            "user_known": 1.0,
        },
        id="displeased user",
    ),
    pytest.param(
        ExchangeView(question="q", reply="r", user_helpful_rate=0.9, user_votes=0),
        {"user_rate": 0.5, "user_known": 0.0},
        id="a rate without votes is unknown",
    ),
]


@pytest.mark.parametrize(("view", "expected"), TABLE)
def test_features_table(view: ExchangeView, expected: dict[str, object]) -> None:
    x = features(view)
    for key, value in expected.items():
        if isinstance(value, float):
            assert x[key] == pytest.approx(value), key
        else:
            assert x[key] == value, key


@pytest.mark.parametrize(("view", "expected"), TABLE)
def test_every_numeric_key_present_finite_and_json_safe(
    view: ExchangeView, expected: dict[str, object]
) -> None:
    x = features(view)
    for key in NUMERIC_KEYS:
        value = x[key]
        assert isinstance(value, float), key
        assert math.isfinite(value), key
    assert json.loads(json.dumps(x, allow_nan=False)) == x
    assert set(x) == {*NUMERIC_KEYS, "reply", "question", "route", "model", "finish_reason"}


def test_features_are_pure() -> None:
    view = ExchangeView(
        question="Capital of France?",
        reply=HEDGING,
        user_helpful_rate=0.5,
        user_votes=3,
        history=(("bot", "Hi"), ("user", "Capital of France?")),
    )
    assert features(view) == features(view)


def test_hedging_and_plain_differ_where_the_model_can_see_it() -> None:
    hedging = features(ExchangeView(question="Capital of France?", reply=HEDGING))
    plain = features(ExchangeView(question="Capital of France?", reply=PLAIN))
    assert plain["hedges"] == 0.0
    assert hedging["hedges"] == 3.0


# A long reply: a hedge and a refusal in the middle, which is not read.
LONG_START = "Paris is the capital of France. " * 30  # 960 characters
LONG_MIDDLE = "Maybe, I'm not sure. I can't say. " * 40
LONG_END = "Its population is about two million people. " * 12


def test_a_long_reply_is_read_at_its_start_and_its_end() -> None:
    reply = LONG_START + LONG_MIDDLE + LONG_END
    reading = read(reply)
    seq = words(reply)
    assert len(reading.head) > 0 and len(reading.tail) > 0
    assert list(reading.head) == seq[: len(reading.head)]
    assert list(reading.tail) == seq[len(seq) - len(reading.tail) :]
    assert len(reading.folded) <= READ_HEAD_CHARS + READ_TAIL_CHARS + 1
    x = features(ExchangeView(question="What is the capital of France?", reply=reply))
    assert x["reply"] == reply
    assert x["hedges"] == x["refusals"] == 0.0  # in the middle: not read
    # The length features still count the whole reply (its words estimated).
    assert x["reply_chars"] == pytest.approx(math.log1p(len(reply.strip())))
    assert x["reply_words"] == pytest.approx(math.log1p(len(seq)), abs=0.1)


def test_a_reply_within_the_bound_is_read_whole() -> None:
    reply = "word " * ((READ_HEAD_CHARS + READ_TAIL_CHARS) // 5)
    reading = read(reply)
    assert list(reading.head) == words(reply) and reading.tail == ()
    assert reading.words == len(words(reply))


def test_a_cut_without_whitespace_drops_the_word_it_splits() -> None:
    reply = "x" * 2000 + " end"
    reading = read(reply)
    assert reading.head == () and reading.tail == ("end",)


def test_features_cost_stops_growing_with_the_reply() -> None:
    # Everything read of a reply is within the bound, however long the reply.
    short = read(LONG_START + LONG_MIDDLE + LONG_END)
    long = read(LONG_START + LONG_MIDDLE * 50 + LONG_END)
    assert short.tokens == long.tokens and long.words > 10 * short.words


@pytest.mark.parametrize(
    "text",
    [
        "",
        "the link is in the e-mail",
        "i think maybe it works, sorry. i'm not sure",
        "unsorry xsorry sorry. sorry!",
        "as an ai language model i can't say; i apologise, my apologies",
        "perhapsnot perhaps probably-not i'm not allowed",
    ],
)
def test_phrase_counts_skip_the_regex_only_when_no_phrase_occurs(text: str) -> None:
    from middleware.scoring.features import _APOLOGY, _HEDGE, _REFUSAL, _count

    for phrases in (_HEDGE, _REFUSAL, _APOLOGY):
        assert phrases.count(text) == float(_count(phrases.pattern, text))
