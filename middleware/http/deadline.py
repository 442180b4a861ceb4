"""Slow bodies: a request's body must have arrived ``[server] body_timeout_s`` after its
headers, on every route, or the client gets a 408 and the connection is closed.

One deadline per request, enforced around ``receive`` until the last body chunk, so a
body trickled a byte at a time is cut off as surely as one that stops. After the body
(a streamed answer listening for the client's disconnect) ``receive`` is untouched.
Size limits are the routes' own (``bodies.read_body``), enforced while reading.
Headers are uvicorn's business, and uvicorn has no header-read timeout: see README,
Security.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from middleware.http.responses import error_response


class BodyStalled(Exception):
    """Raised from ``receive`` inside the app when the body's deadline has passed."""


class BodyDeadline:
    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyStalled from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except BodyStalled:
            if started:
                raise
            await self._timed_out(scope, receive, send)

    async def _timed_out(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            408,
            f"the request body did not arrive within {self.timeout_s:g} s; send it "
            "whole, faster, or raise [server] body_timeout_s",
            "body_timeout",
            # The rest of the body may still come: don't read it as a request.
            headers={"connection": "close"},
        )
        await response(scope, receive, send)
