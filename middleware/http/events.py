"""``POST /slack/events``: a reviewer channel's inbound requests, behind the gateway's
own checks (the channel's header check, then the body limit) before the channel's
handler sees them."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from middleware.http.bodies import BodyTooLarge, read_body
from middleware.http.responses import error_response
from middleware.ports import ChannelEvents

MAX_EVENT_BYTES = 1024 * 1024


class ChannelEventsEndpoint:
    def __init__(
        self,
        *,
        events: ChannelEvents,
        max_body_bytes: int = MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    async def post(self, request: Request) -> Response:
        problem = self.events.refuse(request.headers, self.clock())
        if problem is not None:
            return error_response(401, problem, "invalid_signature")
        try:
            body = await read_body(request, self.max_body_bytes)
        except BodyTooLarge as exc:
            return error_response(413, str(exc), "body_too_large")

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.events.handle(Request(request.scope, replay))
