"""The review API: a reply's state for whoever holds its token, and verdicts from any tool.

``GET /v1/replies/{reply_id}`` (``X-HITL-Feedback-Token``), ``POST
/v1/reviews/{reply_id}`` and ``GET /v1/replies/{reply_id}/explanation`` (a reviewer's
token or the admin token, ``middleware.http.reviewers``). A verdict posted here takes
the same path as a Slack click, so the loop works without a Slack workspace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from feedback_store import EscalationRow, ExchangeRow, FeedbackRow, ReviewVoteRow, Store
from middleware.errors import InvalidToken, UnknownReply, store_errors
from middleware.flows.decision import MAX_REPLY_ID, DecisionFlow, no_reply_has
from middleware.http.bodies import Text, read_model
from middleware.http.responses import error_response, json_response
from middleware.http.reviewers import Reviewers, Signed
from middleware.learning.explain import Explanation
from middleware.review.items import model_input
from middleware.scoring.policy import held_back_of
from middleware.scoring.tokens import TokenSigner
from middleware.vocabulary import Reason, Verdict

log = logging.getLogger("hitl.review")

MAX_REVIEW_BYTES = 64 * 1024


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    decision: Verdict
    #: who decides; with a reviewer's own token, its name (and this may be left out)
    reviewer: Text | None = Field(default=None, min_length=1, max_length=200)
    reason: Reason | None = None
    correction: Text | None = Field(default=None, max_length=32000)


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def review_view(
    escalation: EscalationRow | None, votes: Sequence[ReviewVoteRow] = ()
) -> dict[str, Any]:
    if escalation is None:
        return {
            "state": "none",
            "by": None,
            "at": None,
            "reason": None,
            "correction": None,
            "votes": [],
        }
    return {
        "state": escalation.state,
        "by": escalation.decided_by,
        "at": iso(escalation.decided_at),
        "reason": escalation.decision_reason,
        "correction": escalation.correction,
        # The audit trail: every reviewer's vote, when and why.
        "votes": [
            {"by": v.reviewer, "decision": v.verdict, "reason": v.reason, "at": iso(v.created_at)}
            for v in votes
        ],
    }


def answer_view(exchange: ExchangeRow, escalation: EscalationRow | None) -> dict[str, Any] | None:
    """A person's answer once one decided: the approved reply or the correction. Never
    before a decision, so a held reply's text is not readable here until then."""
    if escalation is None:
        return None
    if escalation.state == "approved" and exchange.reply_text:  # "": purged
        return {"text": exchange.reply_text, "source": "approved"}
    if escalation.state == "corrected" and escalation.correction:
        return {"text": escalation.correction, "source": "corrected"}
    return None


def released_view(escalation: EscalationRow | None) -> dict[str, Any] | None:
    """What a held client was sent, and when (None: not held, or still waiting)."""
    if escalation is None or escalation.released is None:
        return None
    return {
        "as": escalation.released,
        "at": iso(escalation.released_at),
        "timed_out": bool(escalation.timed_out),
    }


def held_back_view(exchange: ExchangeRow) -> dict[str, str] | None:
    """Which rule of the review budget kept a review candidate from people, and why
    (None: it was not a candidate, or it was escalated)."""
    try:
        reasons = orjson.loads(exchange.reasons_json or "[]")
    except orjson.JSONDecodeError:
        return None
    held = held_back_of(reasons) if isinstance(reasons, list) else None
    return None if held is None else {"rule": held.rule, "message": held.message}


def reply_view(
    exchange: ExchangeRow,
    escalation: EscalationRow | None,
    feedback: FeedbackRow | None,
    votes: Sequence[ReviewVoteRow] = (),
) -> dict[str, Any]:
    """The body of ``GET /v1/replies/{reply_id}`` (pure)."""
    return {
        "reply_id": exchange.id,
        "decision": exchange.decision,
        "confidence": round(float(exchange.confidence), 4),
        "held": bool(escalation is not None and escalation.hold),
        "held_back": held_back_view(exchange),
        "review": review_view(escalation, votes),
        "answer": answer_view(exchange, escalation),
        "released": released_view(escalation),
        "feedback": None
        if feedback is None
        else {
            "rating": feedback.rating,
            "reason": feedback.reason,
            "comment": feedback.comment,
        },
    }


class Explains(Protocol):
    """What the explanation reads from the live model (``middleware.learning.brain``)."""

    def contributions(self, x: dict[str, Any]) -> Explanation | None: ...


def explanation_view(exchange: ExchangeRow, explanation: Explanation) -> dict[str, Any]:
    """The body of ``GET /v1/replies/{reply_id}/explanation`` (pure). ``score`` is the
    live model's now, the logistic of ``log_odds`` (before its first label the gateway
    serves ``[policy] prior`` instead)."""
    return {
        "reply_id": exchange.id,
        "score": round(explanation.score, 6),
        "score_at_reply": round(float(exchange.confidence), 6),
        "log_odds": round(explanation.log_odds, 6),
        "intercept": round(explanation.intercept, 6),
        "tokens": [{"token": t, "contribution": round(c, 6)} for t, c in explanation.tokens],
        "features": [{"name": n, "contribution": round(c, 6)} for n, c in explanation.features],
        "words": [{"word": w, "contribution": round(c, 6)} for w, c in explanation.words],
    }


class ReviewAPI:
    def __init__(
        self,
        *,
        store: Store,
        signer: TokenSigner,
        decisions: DecisionFlow,
        reviewers: Reviewers,
        model: Explains,
    ) -> None:
        self.store = store
        self.signer = signer
        self.decisions = decisions
        self.reviewers = reviewers
        self.model = model

    def sign_in(self, request: Request) -> Signed | Response:
        return self.reviewers.sign_in(
            request.headers, what="the review API", challenge='Bearer, Basic realm="hitl review"'
        )

    async def get_reply(self, request: Request) -> Response:
        reply_id = request.path_params["reply_id"]
        token = request.headers.get("x-hitl-feedback-token", "")
        # A wrong token answers 403 whether or not the reply exists, so ids can't be probed.
        if not token or not self.signer.verify(reply_id, token):
            raise InvalidToken(
                "the X-HITL-Feedback-Token header does not match this reply",
                param="X-HITL-Feedback-Token",
            )
        with store_errors("the store could not be read"):
            exchange = await self.store.get_exchange(reply_id)
            if exchange is None:
                raise UnknownReply(reply_id)
            escalation = await self.store.escalation_for(reply_id)
            feedback = await self.store.feedback_for(reply_id)
            votes = await self.store.review_votes(reply_id) if escalation is not None else []
        return json_response(reply_view(exchange, escalation, feedback, votes))

    async def post_review(self, request: Request) -> Response:
        signed = self.sign_in(request)
        if isinstance(signed, Response):
            return signed
        reply_id = request.path_params["reply_id"]
        verdict = await read_model(request, ReviewIn, MAX_REVIEW_BYTES)
        if isinstance(verdict, Response):
            return verdict
        reviewer = verdict.reviewer if signed.admin else signed.name
        if reviewer is None:
            return error_response(
                422,
                "reviewer: required with the admin token (who decides; a reviewer's own "
                "token names them)",
                "invalid_field",
                param="reviewer",
            )
        outcome = await self.decisions.decide(
            reply_id, verdict.decision, reviewer, verdict.reason, verdict.correction
        )
        if not outcome.applied:
            return error_response(409, outcome.message, "already_decided")
        return json_response(
            {
                "reply_id": reply_id,
                "review": {
                    "state": outcome.state,
                    "by": outcome.decided_by,
                    "at": iso(outcome.decided_at),
                    "reason": outcome.reason,
                    "correction": outcome.correction,
                    "votes": len(outcome.votes),
                    "votes_required": outcome.votes_required,
                },
            }
        )

    async def explain(self, request: Request) -> Response:
        signed = self.sign_in(request)
        if isinstance(signed, Response):
            return signed
        reply_id = request.path_params["reply_id"]
        if no_reply_has(reply_id):
            raise UnknownReply(reply_id[:MAX_REPLY_ID])
        with store_errors("the store could not be read"):
            exchange = await self.store.get_exchange(reply_id)
        if exchange is None:
            raise UnknownReply(reply_id)
        x = model_input(exchange)
        explanation = self.model.contributions(x)
        if explanation is None:
            return error_response(
                409,
                "the live model is not linear, so its score has no word-by-word "
                "explanation; [learner] model = the default logistic regression has one",
                "not_explainable",
            )
        return json_response(explanation_view(exchange, explanation))
