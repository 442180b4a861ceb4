"""``hitl replay``: stream labelled exchanges through the whole loop and show it learn.

Each recorded exchange goes through the parts live traffic runs, built by the same
``build_parts``: the reply flow scores, decides and stores it; the vote flow stores the
recorded thumb; the learner learns it before the next reply is scored. The figures
tally, for each budget in ``BUDGETS``, what a policy with ``escalate_below = 1.0`` and
no hourly cap (a stream has no clock) would have sent to people: the model does not
depend on what was escalated, so one pass scores every budget, each with its own
``ReviewBudget``.

Into a real store (``--store``), the replayed exchanges are on route "replay" and their
escalations in state "replayed": the report counts them apart, the review queue and the
outbox (Slack) never see them. They are timed when they were replayed: a recorded
stream has no usable clock of its own (ConvAI's order is its only order).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from feedback_store import Store
from feedback_store.report import roc_auc
from middleware.app import replay_deep
from middleware.app.parts import build_parts
from middleware.flows import ChatExchange, Vote
from middleware.learning.progress import WholeStream
from middleware.scoring.completion import ReplySummary
from middleware.scoring.policy import ReviewBudget, Thresholds, is_candidate
from middleware.scoring.tokens import new_reply_id
from middleware.settings import Settings

BUDGETS = (0.1, 0.2, 0.3)


@dataclass(frozen=True, slots=True)
class Recorded:
    question: str
    history: tuple[tuple[str, str], ...]
    reply: str
    label: int
    user: str | None


def read_stream(path: Path) -> Iterator[Recorded]:
    """Rows in the shared data format (see shared/data/README.md)."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"not JSON: {exc}") from None
                yield recorded(row)
            except ValueError as exc:
                raise ValueError(
                    f"{path}:{number}: not a labelled exchange ({exc}); each line is an "
                    'object with "reply" (a string) and "label" (0 or 1), see the data README'
                ) from None


def recorded(row: object) -> Recorded:
    """One row of a stream, or ValueError saying what is wrong with it (pure)."""
    if not isinstance(row, dict):
        raise ValueError(f"a line must be a JSON object, not {type(row).__name__}")
    for name in ("reply", "label"):
        if name not in row:
            raise ValueError(f"no {name!r}")
    label, reply = row["label"], row["reply"]
    if label not in (0, 1) or isinstance(label, float):
        raise ValueError(f"'label' must be 0 or 1, not {orjson.dumps(label).decode()[:40]}")
    if not isinstance(reply, str):
        raise ValueError("'reply' must be a string")
    question = row.get("question")
    if question is not None and not isinstance(question, str):
        raise ValueError("'question' must be a string")
    turns = row.get("history") or []
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        raise ValueError('\'history\' must be an array of {"role", "text"} objects')
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError("'meta' must be an object")
    history = tuple(
        ("bot" if turn.get("role") == "bot" else "user", str(turn.get("text", "")))
        for turn in turns
    )
    user = meta.get("user")
    return Recorded(question or "", history, reply, int(label), None if user is None else str(user))


def messages_of(item: Recorded) -> list[dict[str, str]]:
    messages = [
        {"role": "assistant" if role == "bot" else "user", "content": text}
        for role, text in item.history
    ]
    if item.question:
        messages.append({"role": "user", "content": item.question})
    if not messages:
        messages.append({"role": "user", "content": ""})
    return messages


@dataclass
class BudgetTally:
    budget: ReviewBudget
    escalated: int = 0
    caught: int = 0


@dataclass
class ReplayResult:
    labels: int = 0
    downs: int = 0
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    tallies: dict[float, BudgetTally] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    #: with the deeper look on, the live model's own figures (the rest are the combined)
    live: dict[str, Any] | None = None
    live_tallies: dict[float, BudgetTally] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        def share(n: int, d: int) -> float:
            return round(n / d, 4) if d else 0.0

        live = {}
        if self.live is not None:
            live = {
                "live": {
                    **{k: _round(self.live.get(k)) for k in ("roc_auc", "log_loss", "accuracy")},
                    "caught_at_budget": {
                        str(b): share(t.caught, self.downs) for b, t in self.live_tallies.items()
                    },
                    "escalated_share": {
                        str(b): share(t.escalated, self.labels)
                        for b, t in self.live_tallies.items()
                    },
                }
            }
        return {
            "labels": self.labels,
            "roc_auc": _round(self.summary.get("roc_auc")),
            "log_loss": _round(self.summary.get("log_loss")),
            "accuracy": _round(self.summary.get("accuracy")),
            "caught_at_budget": {
                str(b): share(t.caught, self.downs) for b, t in self.tallies.items()
            },
            "escalated_share": {
                str(b): share(t.escalated, self.labels) for b, t in self.tallies.items()
            },
            **live,
            "baseline": self.baseline,
            "labels_per_second": round(self.labels / self.seconds, 1) if self.seconds else 0.0,
        }


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def _tallies(slack: float) -> dict[float, BudgetTally]:
    return {b: BudgetTally(ReviewBudget(share=b, per_hour=None, slack=slack)) for b in BUDGETS}


def _tally(tallies: dict[float, BudgetTally], confidence: float, outlier: bool, label: int) -> None:
    """Each budget's policy on this score: candidates are all replies (escalate_below 1.0)."""
    now = time.time()
    candidate = is_candidate(confidence, outlier, Thresholds(escalate_below=1.0))
    for tally in tallies.values():
        escalate = candidate and tally.budget.allows(confidence, now)
        tally.budget.record(confidence, escalate, now)
        if escalate:
            tally.escalated += 1
            tally.caught += label == 0


def run_baseline(items: list[Recorded], slack: float) -> dict[str, Any]:
    """TF-IDF of the reply | LogisticRegression(SGD 0.5), predict then learn (the bar)."""
    from river import feature_extraction, linear_model, optim

    model = feature_extraction.TFIDF(
        on="reply", ngram_range=(1, 2)
    ) | linear_model.LogisticRegression(optimizer=optim.SGD(0.5))
    tallies = _tallies(slack)
    ys, ps = [], []
    for item in items:
        x = {"reply": item.reply}
        p = model.predict_proba_one(x).get(True, 0.5)
        model.learn_one(x, item.label == 1)
        ys.append(item.label)
        ps.append(p)
        _tally(tallies, p, False, item.label)
    downs = sum(1 for y in ys if y == 0)
    return {
        "roc_auc": _round(roc_auc(ys, ps)),
        "caught_at_budget": {
            str(b): round(t.caught / downs, 4) if downs else 0.0 for b, t in tallies.items()
        },
    }


@contextlib.asynccontextmanager
async def _store(url: str | None) -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory(prefix="hitl-replay-") as tmp:
        yield Store(url or f"sqlite:///{Path(tmp) / 'replay.db'}", sync="full" if url else "off")


def replay_settings(settings: Settings) -> Settings:
    """``settings`` as replay runs them: no model snapshots (the stream is replayed whole
    in one go), no hourly review cap (a stream has no clock)."""
    return settings.model_copy(
        update={
            "learner": settings.learner.model_copy(
                update={"snapshot_every_labels": 10**9, "snapshot_interval_s": 10**9}
            ),
            "policy": settings.policy.model_copy(update={"max_reviews_per_hour": 10**9}),
        }
    )


def exchange_of(item: Recorded, started: float) -> ChatExchange:
    """A recorded exchange as the chat endpoint hands it to the reply flow."""
    payload: dict[str, Any] = {"model": "replay", "messages": messages_of(item)}
    if item.user:
        payload["user"] = item.user
    return ChatExchange(
        reply_id=new_reply_id(),
        payload=payload,
        end_user=item.user,
        risky=False,
        started=started,
        summary=ReplySummary(text=item.reply, finish_reason="stop"),
        signals={},
        model="replay",
        # What the policy sends to people is kept as "replayed": nobody waits for a
        # recorded reply, so no card is posted and the review queue stays as it was.
        replayed=True,
    )


async def replay(
    items: list[Recorded],
    settings: Settings,
    *,
    store_url: str | None = None,
    baseline: bool = True,
    progress: Any = None,
) -> ReplayResult:
    """Each item through the parts ``hitl serve`` runs: the reply flow scores, decides and
    records it, the vote flow records its thumb, the learner learns it."""
    slack = settings.policy.review_budget_slack
    result = ReplayResult(tallies=_tallies(slack))
    async with _store(store_url) as store:
        parts = build_parts(replay_settings(settings), environ={}, store=store)
        await parts.start(serve=False)
        deep, ys, ps = parts.deep, [], []
        try:
            started = time.perf_counter()
            if deep is not None:
                result.live_tallies = _tallies(slack)
                await replay_deep.prepare(deep, [t for i in items for t in (i.question, i.reply)])
            for item in items:
                exchange = exchange_of(item, time.perf_counter())
                assessment = await parts.replies(exchange)
                # Tallied as a client sees it: the confidence in the hitl object.
                live = round(assessment.confidence, 4)
                score = live
                if deep is not None:
                    _tally(result.live_tallies, live, False, item.label)
                    score = await replay_deep.look_at(
                        deep, exchange.reply_id, item.question, item.reply, live
                    )
                    ys.append(item.label)
                    ps.append(score)
                _tally(result.tallies, score, False, item.label)
                await parts.votes(
                    Vote(
                        reply_id=exchange.reply_id,
                        token=parts.signer.sign(exchange.reply_id),
                        rating="up" if item.label else "down",
                    )
                )
                await parts.learner.step()
                if deep is not None:
                    await deep.catch_up()
                result.labels += 1
                result.downs += item.label == 0
                if progress is not None:
                    progress(result.labels, parts.brain.progress)
            result.seconds = time.perf_counter() - started
            result.summary = (await WholeStream.from_store(store)).summary()
            if deep is not None:
                result.live, result.summary = result.summary, replay_deep.figures(ys, ps)
        finally:
            if deep is not None:
                deep.look.embedder.close()
            await parts.stop(serve=False)
    if baseline:
        result.baseline = await asyncio.to_thread(run_baseline, items, slack)
    return result
