"""What the conversation features add to the request path, per reply.

    python bench/conversation_cost.py [--n 3000]

For replies of 5, 50 and 1,000 words (each with a question, four earlier turns, a
known user and a sibling), it times in one run, alternating, the median microseconds of

- with: what the scorer does per reply: ``sibling_key``, the sibling and thumbs
  look-ups, ``features()``, and the new sibling's ``put``;
- without: ``features()`` with the conversation part replaced by a constant dict of its
  keys (what the model sees of an empty conversation), and no look-ups;

and prints both, their difference and their ratio. The issue's bound: at most 30 µs more.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from unittest import mock

from middleware.scoring import features as features_module
from middleware.scoring.conversation import (
    RecentThumbs,
    Sibling,
    SiblingIndex,
    conversation_features,
    sibling_key,
)
from middleware.scoring.features import ExchangeView, features, read

WORDS = [
    "the",
    "parcel",
    "left",
    "our",
    "depot",
    "on",
    "monday",
    "and",
    "should",
    "reach",
    "you",
    "within",
    "three",
    "days",
]


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def run(n_words: int, n: int, seed: int = 1) -> tuple[float, float]:
    rng = random.Random(seed)
    history = tuple((("user", "bot")[i % 2], text(rng, 12)) for i in range(4))
    # distinct replies, so the cache of ``read`` does not make a second call free
    replies = [text(rng, n_words) for _ in range(n)]
    question = text(rng, 10)
    siblings, thumbs = SiblingIndex(), RecentThumbs()
    thumbs.record("ann", False)
    key = sibling_key("ann", question, history)
    siblings.put(key, Sibling(frozenset(read(replies[-1]).tokens), n_words, 0.4))
    constant = conversation_features(
        reply_tokens=(), reply_words=0, question_words=0, history=(), thumbs=None, sibling=None
    )

    def with_conversation(reply: str) -> None:
        k = sibling_key("ann", question, history)
        view = ExchangeView(
            question=question,
            reply=reply,
            history=history,
            user_helpful_rate=0.4,
            user_votes=3,
            thumbs=thumbs.get("ann"),
            sibling=siblings.get(k),
        )
        features(view)
        reading = read(reply)
        siblings.put(k, Sibling(frozenset(reading.tokens), reading.words, 0.4))

    def without_conversation(reply: str) -> None:
        view = ExchangeView(
            question=question, reply=reply, history=history, user_helpful_rate=0.4, user_votes=3
        )
        features(view)

    with_us, without_us = [], []
    patched = mock.patch.object(features_module, "conversation_features", lambda **_: constant)
    for i, reply in enumerate(replies):
        with_us.append(timed(lambda r=reply: with_conversation(r)))  # type: ignore[misc]
        features_module._read.cache_clear()  # both sides read the reply afresh
        with patched:
            without_us.append(timed(lambda r=reply: without_conversation(r)))  # type: ignore[misc]
        features_module._read.cache_clear()
        if i < 200:  # warm-up
            with_us.pop()
            without_us.pop()
    return statistics.median(with_us), statistics.median(without_us)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000, help="replies per length")
    args = parser.parse_args()
    print(f"{'words':>6} {'with µs':>8} {'without':>8} {'more µs':>8} {'ratio':>6}")
    worst = 0.0
    for n_words in (5, 50, 1000):
        w, wo = run(n_words, args.n)
        worst = max(worst, w - wo)
        print(f"{n_words:6d} {w:8.1f} {wo:8.1f} {w - wo:8.1f} {w / wo:6.3f}")
    print(f"\nat most {worst:.1f} µs more per reply (bound: 30 µs)")
    return 0 if worst <= 30.0 else 1


if __name__ == "__main__":
    sys.exit(main())
