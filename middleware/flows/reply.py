"""Assess and record one reply: score it, decide, commit it, say so.

The chat endpoint hands in what it read from the upstream (``ChatExchange``); replay hands
in the same value built from a recorded stream. The exchange row, and its escalation
when the decision sends it to people, are committed in one store job before the caller
may answer: a reply that is not on record is never delivered.

What is kept is masked first (``[privacy] redact``): the request, the question and the
reply as they are scored, stored and logged. The caller still relays the upstream's
reply as it came (``exchange.summary`` is left as it is).

The scorer decides with this process's own limits. Only a decision that spends a shared
limit then pays a claim on the fleet's counts (``middleware.quotas``): an escalation a
slot of the hourly review cap, an ask one of the user's asks. A refused claim (or one the
counters cannot answer) downgrades the decision as the local limit would have, before
anything is stored; a hold claims no slot, so it never becomes a release.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import orjson

from feedback_store import NewEscalation, NewExchange, Store, StoreError
from middleware.errors import StoreUnavailable
from middleware.flows.deep import DeepFlow
from middleware.flows.hooks import Hooks
from middleware.metrics import ExchangeObserver, NoMetrics
from middleware.quotas import FleetCaps
from middleware.review.privacy import Redactor
from middleware.scoring.completion import ReplySummary, read_conversation
from middleware.scoring.features import FEATURES_VERSION, QUESTION_CHARS, without_text
from middleware.scoring.scorer import Assessment, Scorer
from middleware.vocabulary import REPLAY_ROUTE, REPLAYED_STATE

log = logging.getLogger("hitl.chat")


@dataclass(slots=True)
class ChatExchange:
    """One chat request and what the upstream answered, as the flow needs it."""

    reply_id: str
    payload: dict[str, Any]
    end_user: str | None
    risky: bool
    #: ``time.perf_counter()`` when the request arrived
    started: float
    summary: ReplySummary
    signals: dict[str, float]
    #: the model name the upstream reported (else the request's)
    model: str
    stream: bool = False
    #: "complete", or "incomplete" when the stream broke
    status: str = "complete"
    upstream_status: int = 200
    upstream_ms: float = 0.0
    #: from ``hitl replay``: stored on route "replay", and an escalation is kept as
    #: "replayed" (for the figures), never queued for people or posted
    replayed: bool = False


class _Kept(NamedTuple):
    """What the gateway keeps of an exchange (masked): the request, question and reply."""

    payload: dict[str, Any]
    question: str
    summary: ReplySummary


def metadata(meta: Any) -> dict[str, str | int | float | bool]:
    """The request's ``metadata`` as the report segments by it, within OpenAI's own bounds
    (16 keys of up to 64 characters, values up to 512): the whole of it is already in
    ``request_json``."""
    if not isinstance(meta, dict):
        return {}
    kept: dict[str, str | int | float | bool] = {}
    for key, value in meta.items():
        if len(kept) == 16:
            break
        if isinstance(value, str):
            kept[str(key)[:64]] = value[:512]
        elif isinstance(value, bool | int | float):
            kept[str(key)[:64]] = value
    return kept


class ReplyFlow:
    def __init__(
        self,
        *,
        scorer: Scorer,
        store: Store,
        hooks: Hooks,
        observer: ExchangeObserver | None = None,
        log_bodies: bool = False,
        redact: Redactor | None = None,
        caps: FleetCaps | None = None,
        clock: Callable[[], float] = time.time,
        deep: DeepFlow | None = None,
    ) -> None:
        """``caps``: the fleet's shared review cap and asks (None: this process's own
        limits are the whole fleet's); ``deep``: the deeper look, after the fast decision."""
        self.scorer = scorer
        self.store = store
        self.hooks = hooks
        self.observer = observer or NoMetrics()
        self.log_bodies = log_bodies
        self.redact = redact or Redactor(())
        self.caps = caps
        self.clock = clock
        self.deep = deep

    async def __call__(self, exchange: ChatExchange) -> Assessment:
        """Score, decide and commit ``exchange``; raises ``StoreUnavailable`` if not stored."""
        payload, summary = exchange.payload, exchange.summary
        if self.redact:
            # Scored as it is kept, so what is learned later is what was predicted on.
            payload = self.redact.request(payload)
            summary = replace(summary, text=self.redact(summary.text))
        conversation = read_conversation(payload["messages"])
        assessment = self.scorer.assess(
            question=conversation.question,
            history=conversation.history,
            reply=summary,
            signals=exchange.signals,
            model=exchange.model,
            route="chat",
            end_user=exchange.end_user,
            risky=exchange.risky,
        )
        deep = self.deep
        held = assessment.decision.kind == "hold"
        if deep is not None and held:  # a held reply waits anyway: for the deeper look too
            assessment = await deep.hold(
                exchange.reply_id, conversation.question, summary.text, assessment
            )
        if self.caps is not None:
            assessment = await self._claim(assessment, self.caps)
        total_ms = (time.perf_counter() - exchange.started) * 1000
        kept = _Kept(payload, conversation.question, summary)
        await self._commit(exchange, kept, assessment, total_ms)
        if deep is not None and not held and not exchange.replayed:
            deep.submit(exchange.reply_id, conversation.question, summary.text, assessment)
        self.observer.exchange(
            decision=assessment.decision.kind,
            status=200,
            upstream_ms=exchange.upstream_ms,
            total_ms=total_ms,
        )
        if log.isEnabledFor(logging.INFO):
            self._log(exchange, kept, assessment, total_ms)
        return assessment

    async def _claim(self, assessment: Assessment, caps: FleetCaps) -> Assessment:
        """Claim from the fleet what the decision spends; downgrade what is refused."""
        decision, user = assessment.decision, assessment.end_user
        review = decision.kind != "escalate" or await caps.review()
        # An end user without a name is never limited (as ``AskLimiter`` has it).
        ask = not decision.ask_feedback or user is None or await caps.ask(user)
        if review and ask:
            return assessment
        return self.scorer.refused(assessment, review=review, ask=ask)

    async def _commit(
        self, exchange: ChatExchange, kept: _Kept, assessment: Assessment, total_ms: float
    ) -> None:
        now = self.clock()
        payload, question, summary = kept
        meta = payload.get("metadata")
        decision = assessment.decision
        row = NewExchange(
            id=exchange.reply_id,
            created_at=now,
            model=str(payload.get("model") or "")[:200],
            route=REPLAY_ROUTE if exchange.replayed else "chat",
            end_user=exchange.end_user,
            stream=exchange.stream,
            request_json=orjson.dumps(payload).decode(),
            question=question[:QUESTION_CHARS],
            # PostgreSQL cannot store NUL; an upstream may send one.
            reply_text=summary.text.replace("\x00", ""),
            finish_reason=(summary.finish_reason or None) and str(summary.finish_reason)[:40],
            status=exchange.status,
            upstream_status=exchange.upstream_status,
            upstream_ms=exchange.upstream_ms,
            total_ms=total_ms,
            confidence=assessment.confidence,
            decision=decision.kind,
            ask_feedback=decision.ask_feedback,
            outlier=assessment.outlier,
            features_json=orjson.dumps(without_text(assessment.features)).decode(),
            features_version=FEATURES_VERSION,
            reasons_json=orjson.dumps(assessment.reasons).decode(),
            meta_json=orjson.dumps(metadata(meta)).decode(),
        )
        escalation = None
        if decision.reviewed:
            escalation = NewEscalation(
                reply_id=exchange.reply_id,
                state=REPLAYED_STATE if exchange.replayed else "pending",
                hold=decision.kind == "hold",
                # A confident reply goes to people only because it looks unlike the rest.
                trigger="outlier"
                if assessment.outlier and assessment.confidence >= 0.5
                else "policy",
                created_at=now,
                next_attempt_at=now,
            )
        try:
            await self.store.record_exchange(row, escalation)
        except StoreError as exc:
            raise StoreUnavailable(
                f"the exchange could not be stored ({exc}); the reply was not delivered"
            ) from exc
        if escalation is not None and not exchange.replayed:
            self.hooks.review_queued()

    def _log(
        self, exchange: ChatExchange, kept: _Kept, assessment: Assessment, total_ms: float
    ) -> None:
        decision = assessment.decision.kind
        fields: dict[str, Any] = {
            "reply_id": exchange.reply_id,
            "decision": decision,
            "confidence": round(assessment.confidence, 4),
            "stream": exchange.stream,
            "status": exchange.status,
            "upstream_status": exchange.upstream_status,
            "upstream_ms": round(exchange.upstream_ms, 2),
            "total_ms": round(total_ms, 2),
        }
        held = assessment.decision.held_back
        if held is not None:  # a review candidate the budget kept from people
            fields["held_back"] = held.rule
            fields["held_back_why"] = held.message
        if self.log_bodies:  # off by default: questions and answers may hold personal data
            fields["question"] = kept.question
            # A held reply's text goes only to reviewers until one decides.
            if decision != "hold":
                fields["reply"] = kept.summary.text
        log.info(
            "reply %s %s confidence=%.3f upstream_ms=%.1f total_ms=%.1f%s",
            exchange.reply_id,
            decision,
            assessment.confidence,
            exchange.upstream_ms,
            total_ms,
            "" if held is None else f" held_back={held.rule} ({held.message})",
            extra={"fields": fields},
        )
