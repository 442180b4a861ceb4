"""The features of every labelled exchange as the feature code computes them now.

A retrain normally learns the features stored at reply time; after a change to the
feature code (``FEATURES_VERSION``) older exchanges keep their old ones. ``recompute``
replays every stored exchange in the order it was scored (``created_at``) and computes
its features again from what the store holds: the question and history from the
request's messages, the reply text, finish reason, end user. The state the features
read is rebuilt as the replay goes, as the gateway built it:

- the end user's helpful rate, votes and recent thumbs, from the labels known *before*
  the exchange (created earlier, and on an exchange already replayed: a label never
  counts before its own reply was scored), as ``Brain.learn_label`` counts them;
- the sibling (an earlier reply to the same conversation), from every exchange replayed
  so far, labelled or not, with the confidence the live model gave it.

What the store keeps only as features is read back from them: the upstream's signals
(mean log-probability, retrieval similarity, tool calls) and the model name the upstream
reported. A purged exchange has no text left: it keeps its stored features (the
``~reply`` digest), and is counted; with no text it is no sibling for later replies.

The replay matches what scoring computed for one gateway process that kept running (the
sibling index lives in a process's memory) and whose learner kept up (a label learned a
moment after the next reply was scored counts one reply early here).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from dataclasses import dataclass, replace
from typing import Any

import orjson

from feedback_store import ExchangeRow, LabelRow, Store
from feedback_store.history import exchanges_in_order
from feedback_store.purge import is_purged
from middleware.learning.model import DIGEST_PREFIX
from middleware.scoring.completion import read_conversation
from middleware.scoring.conversation import RecentThumbs, SiblingIndex, sibling_key
from middleware.scoring.features import (
    FEATURES_VERSION,
    NUMERIC_KEYS,
    ExchangeView,
    features,
    sibling_of,
    without_text,
)

__all__ = ["Recomputed", "Replay", "code_keys", "padded", "recompute", "stale"]


@dataclass(frozen=True, slots=True)
class Recomputed:
    """The labels with their features recomputed, and what the replay did."""

    rows: list[LabelRow]
    #: why: "asked" (``--recompute``) or what the stored features lack
    why: str
    exchanges: int  # every exchange replayed (labelled or not: siblings)
    recomputed: int  # labelled exchanges whose features were computed again
    fell_back: int  # labelled exchanges purged: their stored features were kept
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "recomputed": True,
            "why": self.why,
            "features_version": FEATURES_VERSION,
            "exchanges": self.exchanges,
            "labelled": self.recomputed,
            "purged_kept_stored": self.fell_back,
            "seconds": round(self.seconds, 3),
        }


def code_keys() -> frozenset[str]:
    """The keys the feature code stores for every exchange (all of them always present)."""
    return frozenset(without_text(features(ExchangeView(question="", reply=""))))


def stale(rows: list[LabelRow]) -> str | None:
    """Why the stored features of ``rows`` are not the code's (None when all of them are).

    A row that records its feature code version is stale when that version is not
    ``FEATURES_VERSION``; one stored before versions were recorded is judged by its keys
    (a change that kept the keys but computed them differently needs ``--recompute``
    said outright for those)."""
    expected = code_keys()
    old = 0
    versions: set[int] = set()
    missing: set[str] = set()
    extra: set[str] = set()
    for row in rows:
        if row.features_version is not None:
            if row.features_version != FEATURES_VERSION:
                old += 1
                versions.add(row.features_version)
            continue
        keys = {k for k in orjson.loads(row.features_json) if not k.startswith(DIGEST_PREFIX)}
        if keys != expected:
            old += 1
            missing |= expected - keys
            extra |= keys - expected
    if not old:
        return None
    said = [f"version {', '.join(map(str, sorted(versions)))}"] if versions else []
    said += [f"without {', '.join(sorted(missing))}"] if missing else []
    said += [f"with {', '.join(sorted(extra))} the code no longer computes"] if extra else []
    return (
        f"{old} of {len(rows)} labelled exchanges were stored by other feature code "
        f"({'; '.join(said)}; this code is version {FEATURES_VERSION})"
    )


def padded(rows: list[LabelRow]) -> list[LabelRow]:
    """``rows`` with every numeric feature the model reads: one an older feature code did
    not store reads 0.0, as ``features()`` stores a missing signal (the model's
    ``Select`` of the numeric keys refuses a row without one)."""
    out = []
    for row in rows:
        x = orjson.loads(row.features_json)
        missing = [k for k in NUMERIC_KEYS if k not in x]
        if missing:
            x.update(dict.fromkeys(missing, 0.0))
            row = replace(row, features_json=orjson.dumps(x).decode())
        out.append(row)
    return out


def _signal(stored: dict[str, Any], key: str, flag: str) -> float | None:
    value = stored.get(key)
    if stored.get(flag) == 1.0 and isinstance(value, int | float):
        return float(value)
    return None


def _text(stored: dict[str, Any], key: str, default: str) -> str:
    value = stored.get(key)
    return value if isinstance(value, str) else default


class Replay:
    """The state of the replay: feed it every exchange in scoring order (``exchange``),
    then read the labels back with their recomputed features (``rows``)."""

    def __init__(self, labels: list[LabelRow]) -> None:
        self.labels = labels
        self._labelled = {row.reply_id for row in labels}
        self._due = deque(sorted(labels, key=lambda row: (row.created_at, row.id)))
        self._scored: set[str] = set()  # labelled exchanges replayed so far
        self._early: defaultdict[str, list[LabelRow]] = defaultdict(list)
        self.users: dict[str, list[int]] = {}
        self.thumbs = RecentThumbs()
        self.siblings = SiblingIndex()
        self.features: dict[str, str] = {}
        self.exchanges = self.fell_back = 0

    def _count(self, label: LabelRow) -> None:
        # as ``Brain.learn_label`` counts a label for its end user
        if label.source == "user" and label.end_user:
            counts = self.users.setdefault(label.end_user, [0, 0])
            counts[0] += int(label.value)
            counts[1] += 1
            self.thumbs.record(label.end_user, bool(label.value))

    def _known_before(self, at: float) -> None:
        due = self._due
        while due and due[0].created_at < at:
            label = due.popleft()
            if label.reply_id in self._scored:
                self._count(label)
            else:  # stamped before its own reply was scored (clocks): wait for it
                self._early[label.reply_id].append(label)

    def exchange(self, row: ExchangeRow) -> None:
        self._known_before(row.created_at)
        self.exchanges += 1
        labelled = row.id in self._labelled
        if is_purged(row):
            self.fell_back += labelled
        else:
            x = features(self.view(row))
            if labelled:
                self.features[row.id] = orjson.dumps(without_text(x)).decode()
        if labelled:
            self._scored.add(row.id)
            for label in self._early.pop(row.id, ()):
                self._count(label)

    def view(self, row: ExchangeRow) -> ExchangeView:
        """What the scorer saw of ``row`` (and, as it did, the sibling index learns it)."""
        stored = orjson.loads(row.features_json)
        try:
            payload = orjson.loads(row.request_json)
        except orjson.JSONDecodeError:
            payload = None
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if isinstance(messages, list):
            conversation = read_conversation(messages)
            question, history = conversation.question, conversation.history
        else:  # a row written without its request: the question column, no history
            question, history = row.question, ()
        user = row.end_user
        counts = self.users.get(user) if user is not None else None
        key = sibling_key(user, question, history)
        view = ExchangeView(
            question=question,
            reply=row.reply_text,
            history=history,
            finish_reason=row.finish_reason,
            tool_calls=int(stored.get("tool_calls", 0)),
            logprob_mean=_signal(stored, "logprob_mean", "has_logprob"),
            retrieval_score=_signal(stored, "retrieval_score", "has_retrieval"),
            # the scorer was told the upstream's model name, which only the features keep
            route=_text(stored, "route", "chat"),
            model=_text(stored, "model", row.model),
            user_helpful_rate=None if counts is None else counts[0] / counts[1],
            user_votes=0 if counts is None else counts[1],
            thumbs=self.thumbs.get(user),
            sibling=self.siblings.get(key),
        )
        if key is not None:
            self.siblings.put(key, sibling_of(row.reply_text, row.confidence))
        return view

    def rows(self) -> list[LabelRow]:
        return [
            replace(row, features_json=self.features[row.reply_id])
            if row.reply_id in self.features
            else row
            for row in self.labels
        ]


async def recompute(store: Store, labels: list[LabelRow], *, why: str) -> Recomputed:
    """``labels`` with the features the code computes now (see the module's docstring)."""
    started = time.perf_counter()
    state = Replay(labels)

    def feed(page: list[ExchangeRow]) -> None:
        for row in page:
            state.exchange(row)

    async for page in exchanges_in_order(store):
        await asyncio.to_thread(feed, page)  # CPU-bound: off the loop
    rows = state.rows()
    recomputed = len(state.features)
    seconds = time.perf_counter() - started
    return Recomputed(rows, why, state.exchanges, recomputed, state.fell_back, seconds)
