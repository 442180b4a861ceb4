"""``hitl replay``: stream labelled exchanges through the whole loop and show it learn.

Each recorded exchange goes through the code live traffic runs: the chat endpoint
(with a scripted upstream that returns the recorded reply) scores, decides and stores
it; the feedback endpoint stores the recorded thumb; the learner learns it before the
next reply is scored. The policy runs with ``escalate_below = 1.0`` and no hourly cap
(a stream has no clock) for each budget in ``BUDGETS``; the model does not depend on
what was escalated, so one pass scores every budget, each with its own ``ReviewBudget``.
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
from middleware.flows.reply import Recorder
from middleware.http.chat import ChatContext, ChatEndpoint
from middleware.http.feedback import FeedbackEndpoint, FeedbackIn
from middleware.http.ratelimit import RateLimiter
from middleware.learning.learner import Brain, Learner
from middleware.ports import UpstreamReply, UpstreamRequest
from middleware.scoring.policy import AskLimiter, ReviewBudget, Thresholds, is_candidate
from middleware.scoring.scorer import Scorer
from middleware.scoring.tokens import TokenSigner, new_reply_id, new_secret
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
                row = orjson.loads(line)
                label = int(row["label"])
                reply = str(row["reply"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"{path}:{number}: not a labelled exchange ({exc}); each line needs "
                    '"reply" and "label" (0 or 1), see the data README'
                ) from None
            history = tuple(
                ("bot" if turn.get("role") == "bot" else "user", str(turn.get("text", "")))
                for turn in row.get("history") or ()
                if isinstance(turn, dict)
            )
            meta = row.get("meta") or {}
            user = meta.get("user") if isinstance(meta, dict) else None
            yield Recorded(str(row.get("question") or ""), history, reply, label, user)


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


class ScriptedUpstream:
    """An upstream that answers with the recorded reply it is handed next."""

    name = "scripted"

    def __init__(self) -> None:
        self.next_reply = ""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        body = {
            "id": "chatcmpl-replay",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "replay",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.next_reply},
                    "finish_reason": "stop",
                }
            ],
        }
        return UpstreamReply(200, [("content-type", "application/json")], orjson.dumps(body))

    async def open_stream(self, request: UpstreamRequest) -> UpstreamReply:
        return await self.send(request)


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

    def as_json(self) -> dict[str, Any]:
        def share(n: int, d: int) -> float:
            return round(n / d, 4) if d else 0.0

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
        store = Store(url or f"sqlite:///{Path(tmp) / 'replay.db'}", durable=url is not None)
        await store.start()
        try:
            yield store
        finally:
            await store.close()


async def replay(
    items: list[Recorded],
    settings: Settings,
    *,
    store_url: str | None = None,
    baseline: bool = True,
    progress: Any = None,
) -> ReplayResult:
    slack = settings.policy.review_budget_slack
    result = ReplayResult(tallies=_tallies(slack))
    async with _store(store_url) as store:
        brain = Brain(rolling_window=settings.learner.rolling_window)
        learner = Learner(store, brain, snapshot_every_labels=10**9, snapshot_interval_s=10**9)
        await learner.restore()
        signer = TokenSigner(new_secret())
        upstream = ScriptedUpstream()
        scorer = Scorer(
            brain=brain,
            prior=settings.policy.prior,
            thresholds=Thresholds(escalate_below=1.0, hold_below=settings.policy.hold_below),
            budget=ReviewBudget(share=0.2, per_hour=None, slack=slack),
            asker=AskLimiter(settings.policy.ask_per_user_per_hour),
            ask_sample_rate=settings.policy.ask_sample_rate,
        )
        chat = ChatEndpoint(
            upstream=upstream,
            scorer=scorer,
            signer=signer,
            record=Recorder(store),
            api_key=None,
            forward_client_auth=False,
            max_body_bytes=settings.server.max_body_bytes,
            stream_hitl_chunk=True,
        )
        feedback = FeedbackEndpoint(
            store=store,
            signer=signer,
            max_body_bytes=settings.server.max_feedback_bytes,
            user_weight=settings.learner.user_weight,
            limiter=RateLimiter(0),
        )
        started = time.perf_counter()
        for item in items:
            upstream.next_reply = item.reply
            payload: dict[str, Any] = {"model": "replay", "messages": messages_of(item)}
            if item.user:
                payload["user"] = item.user
            ctx = ChatContext(
                reply_id=new_reply_id(),
                payload=payload,
                end_user=item.user,
                risky=False,
                started=time.perf_counter(),
            )
            request = UpstreamRequest("POST", "/chat/completions", "", [], b"", payload)
            response = await chat.complete(request, ctx)
            if response.status_code != 200:
                raise RuntimeError(
                    f"replay: the chat endpoint answered {response.status_code}: {response.body!r}"
                )
            hitl = orjson.loads(response.body)["hitl"]
            _tally(result.tallies, hitl["confidence"], False, item.label)
            status, answer = await feedback.submit(
                FeedbackIn(
                    reply_id=hitl["reply_id"],
                    token=hitl["feedback_token"],
                    rating="up" if item.label else "down",
                )
            )
            if status not in (200, 201):
                raise RuntimeError(f"replay: the vote was refused ({status}): {answer}")
            await learner.step()
            result.labels += 1
            result.downs += item.label == 0
            if progress is not None:
                progress(result.labels, brain.progress)
        result.seconds = time.perf_counter() - started
        result.summary = brain.progress.summary()
    if baseline:
        result.baseline = await asyncio.to_thread(run_baseline, items, slack)
    return result
