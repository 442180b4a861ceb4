"""How big is a model snapshot after N labels? It should stop growing once the windows fill.

    python bench/snapshot_size.py [STREAM.jsonl | --synthetic] [--at 1000,5000,20000]

Feeds a ``Brain`` labelled exchanges in order, the way the learner does: each reply is
scored (features, outlier check, prediction, or the prior 0.5 while untrained), then
its label is learned with that stored prediction. At each N it prints the size of
``Brain.to_bytes()`` and the pickled size of its largest parts.

The default stream is ``../shared/data/convai2017_thumbs.jsonl`` (see that folder's
README), cycled when N is longer than it; its model keeps growing while new words
arrive (up to the hashed buckets, ``model.py``). ``--synthetic`` replies use forty
fixed sentences, so the model stops growing at once and what is left is the rest of
the state: the evaluation windows, the detectors, the per-user rates.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

from feedback_store import LabelRow
from middleware.app.replay import Recorded, read_stream
from middleware.learning.brain import Brain
from middleware.scoring.features import ExchangeView, features

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "convai2017_thumbs.jsonl"


def synthetic(seed: int = 7) -> Iterator[Recorded]:
    """Hedging replies mostly voted down, plain ones mostly up, by twenty users."""
    rng = random.Random(seed)
    hedges = ["I'm not sure, maybe {w}.", "Perhaps {w}? Hard to say.", "It might be {w}, I guess."]
    plains = ["The answer is {w}.", "{w} is in config.toml.", "Set {w} and restart."]
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    while True:
        hedging = rng.random() < 0.5
        reply = rng.choice(hedges if hedging else plains).format(w=rng.choice(words))
        label = int(hedging == (rng.random() < 0.15))
        yield Recorded("what is it?", (), reply, label, f"u{rng.randrange(20)}")


def parts(brain: Brain) -> str:
    sizes = {k: len(pickle.dumps(v, pickle.HIGHEST_PROTOCOL)) for k, v in vars(brain).items()}
    big = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{k} {v / 1000:.1f}" for k, v in big)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stream", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--at", default="1000,5000,20000", help="label counts to measure at")
    parser.add_argument("--synthetic", action="store_true", help="48 fixed replies")
    args = parser.parse_args()
    checkpoints = sorted(int(n) for n in args.at.split(","))
    if args.synthetic:
        source = synthetic()
    elif args.stream.exists():
        source = itertools.cycle(list(read_stream(args.stream)))
    else:
        print(f"{args.stream} is missing: see shared/data/README.md", file=sys.stderr)
        return 2
    brain = Brain()
    users: dict[str, tuple[int, int]] = {}
    print(f"{'labels':>7} {'snapshot KB':>12}   largest parts (KB)")
    for i, item in enumerate(itertools.islice(source, checkpoints[-1]), 1):
        helpful, votes = users.get(item.user or "", (0, 0))
        x = features(
            ExchangeView(
                question=item.question,
                reply=item.reply,
                history=item.history,
                user_helpful_rate=helpful / votes if votes else None,
                user_votes=votes,
            )
        )
        brain.is_outlier(x)
        predicted = brain.predict(x)
        row = LabelRow(
            id=i,
            reply_id=f"r{i}",
            source="user",
            value=item.label,
            weight=1.0,
            created_at=float(i),
            confidence=0.5 if predicted is None else predicted,
            features_json=orjson.dumps(x).decode(),
            end_user=item.user,
        )
        brain.learn_label(row, now=float(i))
        brain.absorb_unlabelled()
        if item.user:
            users[item.user] = (helpful + item.label, votes + 1)
        if i in checkpoints:
            size = len(brain.to_bytes())
            print(f"{i:7d} {size / 1000:12.1f}   {parts(brain)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
