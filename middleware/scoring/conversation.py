"""What the conversation around a reply says about it: cheap features beside ``features()``.

The end user's last thumb and a fast-moving average of their thumbs (their mood now,
where ``user_rate`` is their whole history), the reply's length against the question's,
how many turns came before, and how the reply compares
with a sibling: an earlier reply to the same conversation (the same end user and the
same question and history), as regenerations and ``n > 1`` produce. The reply's length
against the previous bot turn's is left out: on ConvAI 2017 it lowered the live model's
ROC AUC (0.7430 without it, 0.7420 with it; ``bench/learning.py``).

``conversation_features`` is pure. The state it reads is kept in two bounded
structures: ``RecentThumbs`` (written by the learner, from labels) and ``SiblingIndex``
(written on the request path, by the scorer, once per scored reply).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CONVERSATION_KEYS",
    "FAST_RATE_WEIGHT",
    "RecentThumbs",
    "Sibling",
    "SiblingIndex",
    "Thumbs",
    "conversation_features",
    "sibling_key",
]

#: Always present, numeric (0.0 plus a ``has_*`` flag when a signal is missing).
CONVERSATION_KEYS: tuple[str, ...] = (
    "last_thumb",
    "fast_rate",
    "has_thumbs",
    "reply_vs_question",
    "turns",
    "bot_turns",
    "has_sibling",
    "sibling_overlap",
    "sibling_length",
    "sibling_score",
)

#: The weight of the newest thumb in the fast-moving average: about the last three
#: thumbs count, so it follows a user's mood within a conversation.
FAST_RATE_WEIGHT = 0.4
_BOT_ROLES = frozenset({"assistant", "bot"})


@dataclass(frozen=True, slots=True)
class Thumbs:
    """One end user's last thumb (1 up, 0 down) and their fast-moving average."""

    last: float
    fast: float


@dataclass(frozen=True, slots=True)
class Sibling:
    """What is kept of an earlier reply to the same conversation."""

    words: frozenset[str]
    n_words: int
    score: float


def _log_ratio(a: int, b: int) -> float:
    # log scale, both sides smoothed: 2 words against 20 matters, 200 against 220 not
    return math.log((a + 1) / (b + 1))


def conversation_features(
    *,
    reply_tokens: Sequence[str],
    reply_words: int,
    question_words: int,
    history: Sequence[tuple[str, str]],
    thumbs: Thumbs | None,
    sibling: Sibling | None,
) -> dict[str, float]:
    """The ``CONVERSATION_KEYS`` of one reply (``reply_tokens``: the words read of it,
    ``reply_words``: how many it has)."""
    bot = sum(1 for role, _ in history if role in _BOT_ROLES)
    out = {
        "last_thumb": 0.5 if thumbs is None else thumbs.last,
        "fast_rate": 0.5 if thumbs is None else thumbs.fast,
        "has_thumbs": 0.0 if thumbs is None else 1.0,
        "reply_vs_question": _log_ratio(reply_words, question_words),
        "turns": math.log1p(len(history)),
        "bot_turns": bot / len(history) if history else 0.0,
        "has_sibling": 0.0,
        "sibling_overlap": 0.0,
        "sibling_length": 0.0,
        "sibling_score": 0.0,
    }
    if sibling is not None:
        mine = set(reply_tokens)
        union = len(mine | sibling.words)
        out["has_sibling"] = 1.0
        out["sibling_overlap"] = len(mine & sibling.words) / union if union else 1.0
        out["sibling_length"] = _log_ratio(reply_words, sibling.n_words)
        # centred, so a missing sibling (0.0) reads as an undecided one
        out["sibling_score"] = min(max(sibling.score, 0.0), 1.0) - 0.5
    return out


def sibling_key(
    end_user: str | None, question: str, history: tuple[tuple[str, str], ...]
) -> tuple[str, int] | None:
    """Which replies are siblings: the same end user, question and earlier turns (None
    without an end user: two anonymous askers of "hi" are not one conversation). The
    hash is this process's own (the index is never stored); strings cache theirs."""
    return None if end_user is None else (end_user, hash((question, history)))


class SiblingIndex:
    """The newest reply per conversation, for the ``max_entries`` most recent ones.

    Written and read on the request path only (one event loop, no await inside), so
    no lock; bounded, so a long-running gateway keeps a fixed amount."""

    def __init__(self, max_entries: int = 20_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (got {max_entries})")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int], Sibling] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, int] | None) -> Sibling | None:
        return None if key is None else self._entries.get(key)

    def put(self, key: tuple[str, int] | None, sibling: Sibling) -> None:
        if key is None:
            return
        entries = self._entries
        entries[key] = sibling
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)


class RecentThumbs:
    """Each end user's last thumb and fast-moving average, for the ``max_users`` who
    voted most recently (the learner writes it from labels; the scorer reads it)."""

    def __init__(self, max_users: int = 100_000, weight: float = FAST_RATE_WEIGHT) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be at least 1 (got {max_users})")
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1] (got {weight})")
        self.max_users = max_users
        self.weight = weight
        self._users: OrderedDict[str, Thumbs] = OrderedDict()

    def __len__(self) -> int:
        return len(self._users)

    def get(self, user: str | None) -> Thumbs | None:
        return None if user is None else self._users.get(user)

    def record(self, user: str, helpful: bool) -> Thumbs:
        y = 1.0 if helpful else 0.0
        before = self._users.get(user)
        # the first thumb moves the average from neutral, not all the way
        fast = 0.5 if before is None else before.fast
        thumbs = Thumbs(last=y, fast=fast + self.weight * (y - fast))
        self._users[user] = thumbs
        self._users.move_to_end(user)
        if len(self._users) > self.max_users:
            self._users.popitem(last=False)
        return thumbs
