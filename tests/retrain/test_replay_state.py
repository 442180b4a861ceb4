"""The recompute replay's state, step by step (pure): a label counts for the end user's
rate and thumbs only from the first exchange scored after it, and never before its own
reply was scored; siblings come from every earlier exchange, with its live confidence."""

from __future__ import annotations

import orjson

from feedback_store import ExchangeRow, LabelRow
from middleware.learning.recompute import Replay


def exchange(
    reply_id: str, at: float, user: str | None = "ann", confidence: float = 0.5
) -> ExchangeRow:
    request = {"messages": [{"role": "user", "content": "when do you open"}]}
    return ExchangeRow(
        id=reply_id,
        created_at=at,
        end_user=user,
        request_json=orjson.dumps(request).decode(),
        question="when do you open",
        reply_text="At nine.",
        confidence=confidence,
    )


def label(label_id: int, reply_id: str, at: float, value: int = 0) -> LabelRow:
    return LabelRow(id=label_id, reply_id=reply_id, source="user", value=value, weight=1.0,
                    created_at=at, confidence=0.5, features_json="{}", end_user="ann")  # fmt: skip


def features(state: Replay, reply_id: str) -> dict[str, float]:
    x: dict[str, float] = orjson.loads(state.features[reply_id])
    return x


def test_a_label_counts_only_for_exchanges_scored_after_it() -> None:
    labels = [label(1, "a", at=10.0), label(2, "b", at=30.0, value=1)]
    state = Replay(labels)
    for row in (exchange("a", 5.0), exchange("b", 20.0), exchange("c", 40.0)):
        state.exchange(row)
    a, b = features(state, "a"), features(state, "b")
    assert a["user_known"] == 0.0 and a["has_thumbs"] == 0.0
    assert b["user_known"] == 1.0 and b["last_thumb"] == 0.0  # a's thumb down, not b's own
    assert "c" not in state.features  # unlabelled: replayed for state, not kept
    assert state.users == {"ann": [1, 2]}


def test_a_label_stamped_before_its_own_reply_waits_for_it() -> None:
    # a clock that went back: the label reads as older than the reply it rates
    state = Replay([label(1, "b", at=1.0)])
    state.exchange(exchange("a", 5.0))
    state.exchange(exchange("b", 6.0))
    assert state.users == {"ann": [0, 1]}  # counted once b was scored, not before a
    assert "b" in state.features


def test_siblings_come_from_every_earlier_exchange_with_its_live_confidence() -> None:
    state = Replay([label(1, "b", at=100.0)])
    state.exchange(exchange("a", 5.0, confidence=0.9))  # unlabelled, still a sibling
    state.exchange(exchange("b", 6.0))
    b = features(state, "b")
    assert b["has_sibling"] == 1.0 and b["sibling_overlap"] == 1.0
    assert abs(b["sibling_score"] - 0.4) < 1e-12  # 0.9, centred
    anonymous = Replay([label(1, "d", at=100.0)])
    anonymous.exchange(exchange("c", 5.0, user=None))
    anonymous.exchange(exchange("d", 6.0, user=None))
    assert features(anonymous, "d")["has_sibling"] == 0.0  # no user, no conversation
