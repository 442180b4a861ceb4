"""``POST /v1/feedback``: a thumbs up or down on one reply."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from feedback_store import Store, StoreError
from middleware.http.bodies import read_model
from middleware.http.ratelimit import RateLimiter
from middleware.http.responses import error_response, json_response
from middleware.metrics import FeedbackObserver, NoMetrics
from middleware.scoring.tokens import TokenSigner

log = logging.getLogger("hitl.feedback")

Reason = Literal["incorrect", "incomplete", "unsafe", "off-topic", "tone", "other"]


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reply_id: str = Field(min_length=1, max_length=40)
    token: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down"]
    reason: Reason | None = None
    comment: str | None = Field(default=None, max_length=4000)
    correction: str | None = Field(default=None, max_length=32000)


def voter_of(end_user: str | None) -> str:
    return f"user:{end_user}" if end_user else "user"


class FeedbackEndpoint:
    def __init__(
        self,
        *,
        store: Store,
        signer: TokenSigner,
        max_body_bytes: int,
        user_weight: float,
        limiter: RateLimiter,
        on_downvote: Callable[[str, str | None], Awaitable[None]] | None = None,
        metrics: FeedbackObserver | None = None,
    ) -> None:
        self.metrics = metrics or NoMetrics()
        self.store = store
        self.signer = signer
        self.max_body_bytes = max_body_bytes
        self.user_weight = user_weight
        self.limiter = limiter
        self.on_downvote = on_downvote

    async def post(self, request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        if not self.limiter.allow(client):
            return error_response(
                429,
                "too many feedback requests from this address; wait a minute and retry",
                "rate_limited",
                headers={"retry-after": str(self.limiter.retry_after(client))},
            )
        vote = await read_model(request, FeedbackIn, self.max_body_bytes)
        if isinstance(vote, Response):
            return vote
        status, answer = await self.submit(vote)
        if status >= 400:
            error = answer["error"]
            return error_response(status, error["message"], error["code"], param=error.get("param"))
        return json_response(answer, status=status)

    async def submit(self, vote: FeedbackIn) -> tuple[int, dict[str, Any]]:
        """Check and store one validated vote: (HTTP status, answer). Replay calls this too."""

        def fail(
            status: int, message: str, code: str, param: str | None = None
        ) -> tuple[int, dict[str, Any]]:
            return status, {"error": {"message": message, "code": code, "param": param}}

        # A wrong token answers 403 whether or not the reply exists, so ids can't be probed.
        if not self.signer.verify(vote.reply_id, vote.token):
            return fail(
                403, "the feedback token does not match this reply", "invalid_token", "token"
            )
        try:
            result = await self.store.vote(
                reply_id=vote.reply_id,
                voter=voter_of,
                rating=vote.rating,
                reason=vote.reason,
                comment=vote.comment,
                correction=vote.correction,
                weight=self.user_weight,
            )
        except StoreError as exc:
            log.error("feedback on %s not stored: %s", vote.reply_id, exc)
            return fail(503, "the vote could not be stored; retry", "store_unavailable")
        if not result.found:
            return fail(404, f"no reply with id {vote.reply_id!r}", "unknown_reply", "reply_id")
        self.metrics.feedback(vote.rating, "user")
        if vote.rating == "down" and vote.comment and self.on_downvote is not None:
            await self.on_downvote(vote.reply_id, vote.comment)
        answer = {
            "reply_id": vote.reply_id,
            "rating": vote.rating,
            "status": "created" if result.created else "updated",
        }
        return (201 if result.created else 200), answer
