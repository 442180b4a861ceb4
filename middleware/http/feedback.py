"""``POST /v1/feedback``: a thumbs up or down on one reply, onto ``flows.vote``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from middleware.flows.vote import Vote, VoteFlow
from middleware.http.bodies import read_model
from middleware.http.ratelimit import RateLimiter
from middleware.http.responses import error_response, json_response
from middleware.vocabulary import Rating, Reason


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reply_id: str = Field(min_length=1, max_length=40)
    token: str = Field(min_length=1, max_length=200)
    rating: Rating
    reason: Reason | None = None
    comment: str | None = Field(default=None, max_length=4000)
    correction: str | None = Field(default=None, max_length=32000)


class FeedbackEndpoint:
    def __init__(self, *, votes: VoteFlow, max_body_bytes: int, limiter: RateLimiter) -> None:
        self.votes = votes
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter

    async def post(self, request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        if not self.limiter.allow(client):
            return error_response(
                429,
                "too many feedback requests from this address; wait a minute and retry",
                "rate_limited",
                headers={"retry-after": str(self.limiter.retry_after(client))},
            )
        body = await read_model(request, FeedbackIn, self.max_body_bytes)
        if isinstance(body, Response):
            return body
        # Refusals (403, 404) and store failures (503) are answered by the app's handlers.
        receipt = await self.votes(Vote(**body.model_dump()))
        answer = {
            "reply_id": receipt.reply_id,
            "rating": receipt.rating,
            "status": "created" if receipt.created else "updated",
        }
        return json_response(answer, status=201 if receipt.created else 200)
