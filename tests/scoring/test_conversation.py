"""Conversation features: the pure function by table, its two bounded states, and the
scorer and brain that feed them (a real ``Scorer`` and a real ``Brain``)."""

from __future__ import annotations

import dataclasses
import math
import pickle

import orjson
import pytest

from feedback_store import LabelRow
from middleware.learning.brain import SNAPSHOT_FORMAT, Brain
from middleware.scoring.completion import ReplySummary
from middleware.scoring.conversation import (
    CONVERSATION_KEYS,
    RecentThumbs,
    Sibling,
    SiblingIndex,
    Thumbs,
    conversation_features,
    sibling_key,
)
from middleware.scoring.features import (
    FEATURES_VERSION,
    NUMERIC_KEYS,
    REPLY_KEYS,
    ExchangeView,
    features,
)
from middleware.scoring.policy import AskLimiter, ReviewBudget, Thresholds
from middleware.scoring.scorer import Scorer

BOT_USER = (("bot", "hi there"), ("user", "hello"))


def conv(**kw: object) -> dict[str, float]:
    args: dict[str, object] = {
        "reply_tokens": ("the", "answer"),
        "reply_words": 2,
        "question_words": 2,
        "history": (),
        "thumbs": None,
        "sibling": None,
    }
    args.update(kw)
    return conversation_features(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        # nothing known: neutral thumbs, no sibling, no turns
        ({}, {"last_thumb": 0.5, "fast_rate": 0.5, "has_thumbs": 0.0, "has_sibling": 0.0}),
        ({"thumbs": Thumbs(0.0, 0.3)}, {"last_thumb": 0.0, "fast_rate": 0.3, "has_thumbs": 1.0}),
        ({"thumbs": Thumbs(1.0, 0.8)}, {"last_thumb": 1.0, "fast_rate": 0.8}),
        # length against the question's, on a log scale with both sides smoothed
        ({"reply_words": 2, "question_words": 2}, {"reply_vs_question": 0.0}),
        ({"reply_words": 9, "question_words": 0}, {"reply_vs_question": math.log(10)}),
        ({"reply_words": 0, "question_words": 9}, {"reply_vs_question": -math.log(10)}),
        ({"history": BOT_USER}, {"turns": math.log1p(2), "bot_turns": 0.5}),
        ({"history": (("user", "a"),)}, {"turns": math.log1p(1), "bot_turns": 0.0}),
        # a sibling: word overlap (Jaccard), length ratio, its score centred
        (
            {"sibling": Sibling(frozenset({"the", "answer"}), 2, 0.9)},
            {"has_sibling": 1.0, "sibling_overlap": 1.0, "sibling_length": 0.0},
        ),
        (
            {"sibling": Sibling(frozenset({"no", "answer", "here"}), 3, 0.2)},
            {"sibling_overlap": 0.25, "sibling_length": math.log(3 / 4)},
        ),
        ({"sibling": Sibling(frozenset(), 0, 1.7)}, {"sibling_overlap": 0.0, "sibling_score": 0.5}),
        (
            {"reply_tokens": (), "reply_words": 0, "sibling": Sibling(frozenset(), 0, -1.0)},
            {"sibling_overlap": 1.0, "sibling_score": -0.5},
        ),
    ],
)
def test_conversation_features(kw: dict[str, object], expected: dict[str, float]) -> None:
    x = conv(**kw)
    assert tuple(x) == CONVERSATION_KEYS
    for key, value in expected.items():
        assert x[key] == pytest.approx(value), key


def test_sibling_score_is_centred_on_undecided() -> None:
    assert conv(sibling=Sibling(frozenset(), 1, 0.5))["sibling_score"] == 0.0
    assert conv()["sibling_score"] == 0.0


def test_features_carry_every_conversation_key() -> None:
    view = ExchangeView(question="what is it?", reply="a thing", thumbs=Thumbs(0.0, 0.2))
    x = features(view)
    assert set(CONVERSATION_KEYS) <= set(x)
    assert x["last_thumb"] == 0.0 and x["fast_rate"] == 0.2
    assert (*REPLY_KEYS, *CONVERSATION_KEYS) == NUMERIC_KEYS
    assert not set(REPLY_KEYS) & set(CONVERSATION_KEYS)
    assert FEATURES_VERSION == 2


def test_sibling_key_needs_an_end_user() -> None:
    assert sibling_key(None, "hi", ()) is None
    assert sibling_key("ann", "hi", BOT_USER) == sibling_key("ann", "hi", BOT_USER)
    assert sibling_key("ann", "hi", ()) != sibling_key("bob", "hi", ())
    assert sibling_key("ann", "hi", ()) != sibling_key("ann", "hi", BOT_USER)


def test_sibling_index_keeps_the_newest_and_stays_bounded() -> None:
    index = SiblingIndex(max_entries=2)
    a, b, c = (sibling_key(u, "q", ()) for u in "abc")
    index.put(a, Sibling(frozenset(), 1, 0.1))
    index.put(a, Sibling(frozenset(), 2, 0.2))
    index.put(b, Sibling(frozenset(), 3, 0.3))
    index.put(a, Sibling(frozenset(), 4, 0.4))  # a is the most recent again
    index.put(c, Sibling(frozenset(), 5, 0.5))
    assert len(index) == 2
    assert index.get(b) is None
    assert index.get(a) == Sibling(frozenset(), 4, 0.4)
    index.put(None, Sibling(frozenset(), 6, 0.6))
    assert index.get(None) is None and len(index) == 2
    with pytest.raises(ValueError, match="max_entries must be at least 1"):
        SiblingIndex(0)


def test_recent_thumbs_move_fast_and_stay_bounded() -> None:
    thumbs = RecentThumbs(max_users=2, weight=0.5)
    assert thumbs.get("ann") is None and thumbs.get(None) is None
    assert thumbs.record("ann", False) == Thumbs(0.0, 0.25)
    assert thumbs.record("ann", False) == Thumbs(0.0, 0.125)
    assert thumbs.record("ann", True) == Thumbs(1.0, 0.5625)
    thumbs.record("bob", True)
    thumbs.record("cyd", True)
    assert len(thumbs) == 2 and thumbs.get("ann") is None
    with pytest.raises(ValueError, match=r"weight must be in \(0, 1\]"):
        RecentThumbs(weight=0.0)


def make_scorer(brain: Brain | None = None) -> Scorer:
    return Scorer(
        brain=brain,
        prior=0.5,
        thresholds=Thresholds(),
        budget=ReviewBudget(share=0.0, per_hour=None),
        asker=AskLimiter(0),
        ask_sample_rate=0.0,
    )


def assess(scorer: Scorer, reply: str, user: str | None, question: str = "where?") -> dict:
    return scorer.assess(
        question=question,
        history=BOT_USER,
        reply=ReplySummary(text=reply),
        signals={},
        model="m",
        route="chat",
        end_user=user,
    ).features


def test_the_scorer_finds_a_sibling_of_the_same_user_and_conversation() -> None:
    scorer = make_scorer()
    assert assess(scorer, "in the box", "ann")["has_sibling"] == 0.0
    again = assess(scorer, "in the big box", "ann")
    assert again["has_sibling"] == 1.0
    assert again["sibling_overlap"] == pytest.approx(3 / 4)
    assert again["sibling_score"] == 0.0  # the prior, centred
    assert assess(scorer, "in the box", "bob")["has_sibling"] == 0.0
    assert assess(scorer, "in the box", "ann", question="why?")["has_sibling"] == 0.0
    assert assess(scorer, "in the box", None)["has_sibling"] == 0.0
    assert assess(scorer, "in the box", None)["has_sibling"] == 0.0


def label(i: int, user: str, value: int) -> LabelRow:
    x = features(ExchangeView(question="q", reply=f"reply {i}"))
    return LabelRow(
        id=i,
        reply_id=f"r{i}",
        source="user",
        value=value,
        weight=1.0,
        created_at=float(i),
        confidence=0.5,
        features_json=orjson.dumps({k: v for k, v in x.items() if k != "reply"}).decode(),
        end_user=user,
    )


def test_the_brain_learns_thumbs_and_the_scorer_reads_them() -> None:
    brain = Brain()
    brain.learn_label(label(1, "ann", 1), now=1.0)
    brain.learn_label(label(2, "ann", 0), now=2.0)
    thumbs = brain.recent_thumbs("ann")
    assert thumbs is not None and thumbs.last == 0.0
    assert thumbs.fast == pytest.approx(0.5 + 0.4 * 0.5 - 0.4 * (0.5 + 0.4 * 0.5))
    x = assess(make_scorer(brain), "in the box", "ann")
    assert x["last_thumb"] == 0.0 and x["has_thumbs"] == 1.0
    assert assess(make_scorer(brain), "in the box", "bob")["has_thumbs"] == 0.0
    restored = Brain.from_bytes(brain.to_bytes())
    assert restored.recent_thumbs("ann") == thumbs


def test_a_snapshot_from_before_the_thumbs_loads_without_them() -> None:
    brain = Brain()
    brain.learn_label(label(1, "ann", 1), now=1.0)
    state = dict(brain.__dict__)
    del state["thumbs"]
    blob = pickle.dumps((SNAPSHOT_FORMAT, state))
    restored = Brain.from_bytes(blob)
    assert restored.recent_thumbs("ann") is None
    assert restored.user_rate("ann") == (1.0, 1)


def test_a_label_on_a_reply_scored_before_the_conversation_features_is_learned() -> None:
    # Upgrading the gateway must not stop learning: an exchange stored by older feature
    # code lacks the conversation keys, and its label is learned with them at 0.0.
    brain = Brain()
    brain.learn_label(label(1, "ann", 1), now=1.0)
    old = label(2, "ann", 0)
    stored = orjson.loads(old.features_json)
    for key in CONVERSATION_KEYS:
        stored.pop(key, None)
    old = dataclasses.replace(old, features_json=orjson.dumps(stored).decode())
    brain.learn_label(old, now=2.0)
    assert brain.labels == 2
    assert brain.predict(features(ExchangeView(question="q", reply="reply 3"))) is not None
