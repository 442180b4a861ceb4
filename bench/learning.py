"""The learning benchmark: ``hitl replay`` over a labelled stream, and predict + learn per label.

    python bench/learning.py [STREAM.jsonl ...] [--micro N] [--deep]

For each stream it runs the whole loop (``middleware.app.replay.replay``: features, model,
policy, store, learner, with the baseline measured in the same process) and prints
ROC AUC, caught-at-budget and labels/s next to the baseline's. Then it times the
model alone: the median microseconds of one ``predict`` and one ``learn`` on the
first stream's exchanges, after a warm-up, in this process.

``--deep`` runs the deeper look too (``[scoring] deep = "minilm"``, the ``deep`` extra):
the table then shows both tiers, the combined policy's figures and the live model's.

The default stream is ``../shared/data/convai2017_thumbs.jsonl`` (ConvAI 2017 human
evaluation; see that folder's README for where it comes from).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import orjson

from middleware.app.replay import Recorded, read_stream, replay
from middleware.learning.brain import Brain
from middleware.learning.model import learn
from middleware.scoring.features import ExchangeView, features
from middleware.scoring_settings import ScoringSettings
from middleware.settings import Settings

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "convai2017_thumbs.jsonl"


def micro(items: list[Recorded], n: int) -> tuple[float, float, float]:
    """Median µs of features + predict, of learn, and of both, per label."""
    brain = Brain()
    users: dict[str, list[int]] = {}
    predict_us, learn_us = [], []
    for i, item in enumerate(items[:n]):
        counts = users.get(item.user or "", [0, 0])
        view = ExchangeView(
            question=item.question,
            reply=item.reply,
            history=item.history,
            user_helpful_rate=counts[0] / counts[1] if counts[1] else None,
            user_votes=counts[1],
        )
        t0 = time.perf_counter()
        x = features(view)
        brain.model.predict_proba_one(x)
        t1 = time.perf_counter()
        learn(brain.model, x, bool(item.label), 1.0)
        t2 = time.perf_counter()
        counts[0] += item.label
        counts[1] += 1
        users[item.user or ""] = counts
        if i >= 200:  # past the warm-up
            predict_us.append((t1 - t0) * 1e6)
            learn_us.append((t2 - t1) * 1e6)
    both = [p + q for p, q in zip(predict_us, learn_us, strict=True)]
    return statistics.median(predict_us), statistics.median(learn_us), statistics.median(both)


def _live(r: dict[str, object]) -> dict[str, object]:
    """A result row with the live model's own figures in place of the combined ones."""
    live = r["live"]
    assert isinstance(live, dict)
    return {**r, **live}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("streams", nargs="*", type=Path, default=[DEFAULT])
    parser.add_argument("--micro", type=int, default=3000, help="labels for the micro-benchmark")
    parser.add_argument("--deep", action="store_true", help='[scoring] deep = "minilm"')
    args = parser.parse_args()
    settings = Settings()
    if args.deep:
        settings = settings.model_copy(update={"scoring": ScoringSettings(deep="minilm")})
    rows = []
    first: list[Recorded] = []
    for path in args.streams:
        if not path.exists():
            print(
                f"{path} is missing: the ConvAI 2017 stream is built from the public GitHub "
                "repository deepmipt/turing-data (data_1501534800.tar.gz); see "
                "shared/data/README.md for the format",
                file=sys.stderr,
            )
            return 2
        items = list(read_stream(path))
        first = first or items
        result = asyncio.run(replay(items, settings)).as_json()
        rows.append((path.name, result))
        print(orjson.dumps({"stream": path.name, **result}).decode(), flush=True)
    print()
    header = ("stream", "labels", "AUC", "base", "c@0.2", "base", "esc@0.2", "labels/s")
    widths = (34, 6, 6, 6, 6, 6, 7, 8)
    if args.deep:  # the combined policy's row, then the live model's
        rows = [row for name, r in rows for row in ((name, r), (f"{name} (live)", _live(r)))]
    print(
        " ".join(
            f"{h:{'<' if i == 0 else '>'}{w}}"
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for name, r in rows:
        print(
            f"{name:34} {r['labels']:6d} {r['roc_auc']:6.3f} {r['baseline']['roc_auc']:6.3f} "
            f"{r['caught_at_budget']['0.2']:6.3f} {r['baseline']['caught_at_budget']['0.2']:6.3f} "
            f"{r['escalated_share']['0.2']:7.3f} {r['labels_per_second']:8.0f}"
        )
    p, q, both = micro(first, args.micro)
    print(
        f"\nmodel alone, median per label: features+predict {p:.0f} µs, learn {q:.0f} µs,", end=""
    )
    print(f" both {both:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
