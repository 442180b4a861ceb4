"""``POST /v1/feedback``: a thumbs up or down on one reply, onto ``flows.vote``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from middleware.flows.vote import Vote, VoteFlow
from middleware.http.bodies import Text, read_model
from middleware.http.ratelimit import RateLimit
from middleware.http.responses import error_response, json_response
from middleware.vocabulary import Rating, Reason


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reply_id: str = Field(min_length=1, max_length=40)
    token: str = Field(min_length=1, max_length=200)
    rating: Rating
    reason: Reason | None = None
    comment: Text | None = Field(default=None, max_length=4000)
    correction: Text | None = Field(default=None, max_length=32000)


class FeedbackEndpoint:
    def __init__(self, *, votes: VoteFlow, max_body_bytes: int, limit: RateLimit) -> None:
        self.votes = votes
        self.max_body_bytes = max_body_bytes
        self.limit = limit

    async def post(self, request: Request) -> Response:
        # The client as ClientAddressMiddleware resolved it: the peer, or whom a trusted
        # proxy forwarded for.
        client = request.client.host if request.client else "unknown"
        wait = await self.limit.hit(client)
        if wait is not None:
            return error_response(
                429,
                f"too many feedback requests from this address; retry in {wait} s",
                "rate_limited",
                headers={"retry-after": str(wait)},
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
