"""What scoring one reply costs as the reply grows: features + predict, and learn, per reply.

    python bench/scoring_cost.py [--words 50,200,1000] [--replies 300] [--repeat 3]

The model first learns the first 2,000 labels of the ConvAI 2017 stream (so its weights
and document frequencies are those of a model in use). Then, for each length, it scores
``--replies`` distinct replies of that many words, timing
``features()`` + ``predict`` for each, then ``learn`` on it. Two kinds of reply:
``drawn``, words drawn with a fixed seed from the stream's own replies (real vocabulary,
nearly every word pair new: the costly case), and ``repeated``, the overhead
benchmark's fixed 44-word reply repeated to length (``overhead_wire.reply_text``), after
a number of its own so that no reply hits a cache. It prints the medians in µs
and the cost per extra reply word: the least-squares slope of the medians over length.
``--repeat`` runs the whole measurement that many times and keeps each length's lowest
median (other work on the machine only ever adds time).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from overhead_wire import reply_text

from middleware.app.replay import read_stream
from middleware.learning.brain import Brain
from middleware.learning.model import learn
from middleware.scoring.features import ExchangeView, features

STREAM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "convai2017_thumbs.jsonl"


def slope(xs: list[int], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def measure(
    brain: Brain, vocab: list[str] | None, n_words: int, replies: int, seed: int
) -> tuple[float, float]:
    rng = random.Random(seed)
    score_us, learn_us = [], []
    for i in range(replies):
        if vocab is None:
            reply = f"{seed + i} " + reply_text(n_words - 1)
        else:
            reply = " ".join(rng.choices(vocab, k=n_words))
        view = ExchangeView(question="What do you think about it?", reply=reply)
        t0 = time.perf_counter()
        x = features(view)
        brain.model.predict_proba_one(x)
        t1 = time.perf_counter()
        learn(brain.model, x, i % 3 != 0, 1.0)
        t2 = time.perf_counter()
        score_us.append((t1 - t0) * 1e6)
        learn_us.append((t2 - t1) * 1e6)
    return statistics.median(score_us), statistics.median(learn_us)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--words", default="50,200,1000", help="reply lengths, in words")
    parser.add_argument("--replies", type=int, default=300, help="distinct replies per length")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the lowest median is kept")
    parser.add_argument("--stream", type=Path, default=STREAM)
    args = parser.parse_args()
    lengths = [int(w) for w in args.words.split(",")]
    if len(lengths) < 2:
        parser.error("--words needs at least two lengths for a slope")
    items = list(read_stream(args.stream))
    brain = Brain()
    for item in items[:2000]:
        x = features(ExchangeView(question=item.question, reply=item.reply))
        learn(brain.model, x, bool(item.label), 1.0)
    vocab = [w for item in items for w in item.reply.split()]
    for kind, words in (("drawn", vocab), ("repeated", None)):
        best: dict[int, tuple[float, float]] = {}
        for run in range(args.repeat):
            for n in lengths:
                # Each run and length has replies of its own: none is ever scored twice.
                seed = (run * 100_003 + n) * args.replies
                score, learned = measure(brain, words, n, args.replies, seed=seed)
                old = best.get(n, (score, learned))
                best[n] = (min(old[0], score), min(old[1], learned))
        print(f"{kind:>9} {'reply words':>11} {'features+predict µs':>20} {'learn µs':>9}")
        for n in lengths:
            print(f"{'':9} {n:11d} {best[n][0]:20.1f} {best[n][1]:9.1f}")
        per_word = slope(lengths, [best[n][0] for n in lengths])
        per_word_learn = slope(lengths, [best[n][1] for n in lengths])
        print(
            f"{'':9} cost per extra reply word (slope over {args.words} words): "
            f"features+predict {per_word:.3f} µs, learn {per_word_learn:.3f} µs\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
