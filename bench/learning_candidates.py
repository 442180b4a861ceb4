"""Which online model should score replies? Progressive validation of the candidates (issue 3).

Each candidate in ``middleware.learning.model.CANDIDATES`` sees the labelled stream in file order,
predicting each reply before learning its label, with the features the gateway computes
(``features(ExchangeView(question, reply, history, user_helpful_rate=the voter's running
rate so far))``). The issue's baseline runs in the same process: TF-IDF of the reply |
LogisticRegression(SGD 0.5), on ``{"reply": reply}`` only.

Per candidate: ROC AUC (scikit-learn, over all predictions), log loss, caught@B for
B = 0.1, 0.2, 0.3 (the share of thumbs-down replies escalated when every reply is a
candidate and ``middleware.scoring.policy.ReviewBudget(share=B)`` decides online, as in
``hitl replay``), the escalated share at 0.2, and median µs per predict and per learn.
The ``c@.2 q200`` column replays the 0.2 budget with a variant of that policy: quantile
over the last 200 scores instead of 1,000, and the escalated share allowed up to B + 0.01
(the issue's one point of slack).

    python bench/learning_candidates.py                        # the shared ConvAI 2017 stream
    python bench/learning_candidates.py PATH.jsonl --candidates logreg-adagrad,naive-bayes
    python bench/learning_candidates.py PATH.jsonl --json      # last line: the figures as JSON

About 30 seconds on a 2-core machine for all candidates.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from river import feature_extraction, linear_model, optim
from sklearn.metrics import log_loss, roc_auc_score

from middleware.learning.model import CANDIDATES, DEFAULT_MODEL, learn, make_model, predict
from middleware.scoring.features import ExchangeView, features
from middleware.scoring.policy import ReviewBudget

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "convai2017_thumbs.jsonl"
BUDGETS = (0.1, 0.2, 0.3)
WHERE_FROM = """\
no labelled stream at {path}.
convai2017_thumbs.jsonl comes from the public GitHub repository deepmipt/turing-data
(file data_1501534800.tar.gz, Apache-2.0): the ConvAI 2017 dialogues, one JSON object
per rated bot utterance (thread[].evaluation: 1 = down, 2 = up), in this format:
  {{"id", "order", "question", "history": [{{"role", "text"}}...], "reply", "label",
   "meta": {{"user": ...}}}}
Pass another stream of that format as PATH."""


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def stream(rows: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """(features, label) in file order, each with its voter's helpful rate *before* it."""
    tallies: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    out = []
    for row in rows:
        user = (row.get("meta") or {}).get("user")
        ups, votes = tallies[user] if user else (0, 0)
        view = ExchangeView(
            question=row.get("question") or "",
            reply=row.get("reply") or "",
            history=tuple((h["role"], h["text"]) for h in row.get("history") or ()),
            user_helpful_rate=ups / votes if votes else None,
            user_votes=votes,
        )
        out.append((features(view), int(row["label"])))
        if user:
            tallies[user][0] += int(row["label"])
            tallies[user][1] += 1
    return out


def caught_shipped(scores: list[float], labels: list[int], budget: float) -> tuple[float, float]:
    """(caught, escalated share) under the gateway's own ReviewBudget, as ``hitl replay``."""
    policy = ReviewBudget(share=budget, per_hour=None)
    escalated = caught = 0
    for score, label in zip(scores, labels, strict=True):
        escalate = policy.allows(score, 0.0)
        policy.record(score, escalate, 0.0)
        escalated += escalate
        caught += escalate and label == 0
    downs = labels.count(0)
    return (caught / downs if downs else 0.0), escalated / len(labels)


def caught_variant(
    scores: list[float],
    labels: list[int],
    budget: float,
    *,
    quantile_window: int = 200,
    share_window: int = 1000,
    slack: float = 0.01,
) -> tuple[float, float]:
    """ReviewBudget's rule with its windows and slack as parameters.

    With ``quantile_window=1000, slack=0.0`` it gives the same answers as the shipped class.
    """
    recent: collections.deque[float] = collections.deque()
    ordered: list[float] = []
    decisions: collections.deque[bool] = collections.deque()
    in_window = escalated = caught = 0
    for score, label in zip(scores, labels, strict=True):
        escalate = (in_window + 1) / (len(decisions) + 1) <= budget + slack
        if escalate and len(ordered) >= 20:
            escalate = score <= ordered[max(0, math.ceil(budget * len(ordered)) - 1)]
        escalated += escalate
        caught += escalate and label == 0
        decisions.append(escalate)
        in_window += escalate
        if len(decisions) > share_window:
            in_window -= decisions.popleft()
        recent.append(score)
        bisect.insort(ordered, score)
        if len(recent) > quantile_window:
            del ordered[bisect.bisect_left(ordered, recent.popleft())]
    downs = labels.count(0)
    return (caught / downs if downs else 0.0), escalated / len(labels)


def progressive(
    data: list[tuple[dict[str, Any], int]],
    predict_one: Callable[[dict[str, Any]], float],
    learn_one: Callable[[dict[str, Any], bool], None],
) -> dict[str, Any]:
    scores: list[float] = []
    labels: list[int] = []
    predict_ns: list[int] = []
    learn_ns: list[int] = []
    clock = time.perf_counter_ns
    for x, label in data:
        t0 = clock()
        p = predict_one(x)
        t1 = clock()
        learn_one(x, label == 1)
        t2 = clock()
        scores.append(p)
        labels.append(label)
        predict_ns.append(t1 - t0)
        learn_ns.append(t2 - t1)
    clipped = [min(max(p, 1e-6), 1 - 1e-6) for p in scores]
    caught = {b: caught_shipped(scores, labels, b) for b in BUDGETS}
    return {
        "roc_auc": roc_auc_score(labels, scores),
        "log_loss": log_loss(labels, clipped, labels=[0, 1]),
        "caught_at_budget": {str(b): c for b, (c, _) in caught.items()},
        "escalated_share": {str(b): share for b, (_, share) in caught.items()},
        "caught_0.2_variant": caught_variant(scores, labels, 0.2)[0],
        "us_predict": statistics.median(predict_ns) / 1000,
        "us_learn": statistics.median(learn_ns) / 1000,
    }


def run_candidate(name: str, data: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    model = make_model(name)
    return progressive(data, lambda x: predict(model, x), lambda x, y: learn(model, x, y, 1.0))


def run_baseline(data: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    model = feature_extraction.TFIDF(
        on="reply", ngram_range=(1, 2)
    ) | linear_model.LogisticRegression(optimizer=optim.SGD(0.5))
    return progressive(
        [({"reply": x["reply"]}, y) for x, y in data],
        lambda x: model.predict_proba_one(x).get(True, 0.5),
        lambda x, y: model.learn_one(x, y),
    )


def row(name: str, r: dict[str, Any]) -> str:
    c = r["caught_at_budget"]
    return (
        f"{name:<20} {r['roc_auc']:>6.4f} {r['log_loss']:>7.4f} {c['0.1']:>6.3f} {c['0.2']:>6.3f}"
        f" {c['0.3']:>6.3f} {r['escalated_share']['0.2']:>7.3f} {r['caught_0.2_variant']:>9.3f}"
        f" {r['us_predict']:>7.0f} {r['us_learn']:>7.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON last")
    args = parser.parse_args(argv)
    if not args.path.is_file():
        print(WHERE_FROM.format(path=args.path), file=sys.stderr)
        return 2
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")

    rows = load(args.path)
    started = time.perf_counter()
    data = stream(rows)
    feature_us = (time.perf_counter() - started) / max(len(rows), 1) * 1e6
    downs = sum(1 for _, y in data if y == 0)
    print(f"{args.path.name}: {len(data)} labels, {downs / max(len(data), 1):.1%} thumbs-down,")
    print(f"features() {feature_us:.0f} µs per reply (mean, with the running user rates)\n")
    print(
        f"{'candidate':<20} {'AUC':>6} {'logloss':>7} {'c@.1':>6} {'c@.2':>6} {'c@.3':>6}"
        f" {'esc@.2':>7} {'c@.2 q200':>9} {'µs pred':>7} {'µs lrn':>7}"
    )
    results: dict[str, Any] = {}
    for name in names:
        results[name] = run_candidate(name, data)
        mark = " *" if name == DEFAULT_MODEL else ""
        print(row(name, results[name]) + mark, flush=True)
    results["baseline"] = run_baseline(data)
    print(row("baseline", results["baseline"]))
    print(
        f"\n* default ({DEFAULT_MODEL}). c@B: share of thumbs-down caught by ReviewBudget(B);"
        " esc@.2: escalated share at 0.2;\n  c@.2 q200: quantile of the last 200 scores,"
        " share cap 0.21. Medians of µs per call."
    )
    if DEFAULT_MODEL in results:
        gain = results[DEFAULT_MODEL]["roc_auc"] - results["baseline"]["roc_auc"]
        print(f"  default vs baseline: AUC {gain:+.4f}")
    print(f"  {time.perf_counter() - started:.0f} s in all")
    if args.json:
        print(json.dumps({"path": str(args.path), "labels": len(data), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
