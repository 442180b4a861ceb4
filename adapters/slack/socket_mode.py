"""Slack in Socket Mode: the gateway dials out to Slack over a WebSocket, so reviewers'
clicks arrive without a public URL or a tunnel.

The bolt app of ``events.build_bolt_app`` takes the envelopes through slack-bolt's
``AsyncSocketModeHandler``; bolt acknowledges each one on the socket when a listener
calls ``ack`` (after the verdict is committed, as over HTTP). The first
``apps.connections.open`` is ours, in the background: a refused app token is logged
once, plainly, and not retried (the SDK would retry it forever), a Slack that cannot be
reached is retried with backoff. Once connected, the SDK's client reconnects by itself
(a fresh URL each time: a dropped socket, a stale ping, Slack's ``disconnect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.socket_mode.aiohttp import SocketModeClient

from adapters.slack.channel import map_slack_error
from middleware.errors import (
    ReviewChannelError,
    ReviewChannelPermanent,
    ReviewChannelRetryable,
)

log = logging.getLogger("hitl.slack.socket")

OPEN = "apps.connections.open"

#: what to do about Slack's refusals of an app-level token
TOKEN_HINTS = {
    "invalid_auth": "make a new app-level token with the connections:write scope",
    "not_authed": "make a new app-level token with the connections:write scope",
    "token_revoked": "make a new app-level token with the connections:write scope",
    "not_allowed_token_type": "it must be an app-level token (xapp-...)",
    "missing_scope": "the app-level token needs the connections:write scope",
}


def connection_error(exc: BaseException) -> ReviewChannelError:
    """Our error for a failed ``apps.connections.open`` (pure): retryable or not as for
    any Slack call (``map_slack_error``), said for an app-level token."""
    mapped = map_slack_error(exc, OPEN)
    code = ""
    if isinstance(exc, SlackApiError):
        data = getattr(exc.response, "data", None)
        code = str(data.get("error") or "") if isinstance(data, dict) else ""
        status = getattr(exc.response, "status_code", 0)
        what = f"Slack {OPEN} failed: HTTP {status}" + (f", {code}" if code else "")
    else:
        what = f"Slack {OPEN} failed: {type(exc).__name__}: {exc}"
    if isinstance(mapped, ReviewChannelRetryable):
        return ReviewChannelRetryable(what, retry_after=mapped.retry_after)
    hint = TOKEN_HINTS.get(code)
    return ReviewChannelPermanent(what + (f" ({hint})" if hint else ""))


class SlackSocket:
    """The Socket Mode connection: ``start`` returns at once and connects in the
    background; ``stop`` closes the socket. Both run on the app's event loop (the SDK's
    client needs a running loop from its construction on)."""

    def __init__(
        self,
        *,
        app: AsyncApp,
        app_token: str,
        token_env: str,
        ping_interval_s: float = 10.0,
        timeout_s: float = 10.0,
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
    ) -> None:
        self.app = app
        self._token = app_token
        self.token_env = token_env
        self.ping_interval_s = ping_interval_s
        #: for ``apps.connections.open``, and for the WebSocket to open
        self.timeout_s = timeout_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._handler: AsyncSocketModeHandler | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SlackSocket(<app token in ${self.token_env}>)"

    async def start(self) -> None:
        if self._handler is not None:
            return
        self._handler = AsyncSocketModeHandler(
            self.app,
            self._token,
            logger=logging.getLogger("hitl.slack.socket.sdk"),
            ping_interval=self.ping_interval_s,
        )
        self._task = asyncio.create_task(
            self._connect(self._handler.client), name="hitl-slack-socket"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        handler, self._handler = self._handler, None
        if handler is None:
            return
        client = handler.client
        await handler.close_async()
        # close() cancels the client's loops without waiting for them: wait here, so
        # none outlives the event loop.
        loops = [
            f
            for f in (
                client.message_processor,
                client.current_session_monitor,
                client.message_receiver,
            )
            if f is not None
        ]
        await asyncio.gather(*loops, return_exceptions=True)

    async def _connect(self, client: SocketModeClient) -> None:
        delay = self.retry_base_s
        while True:
            try:
                await self._connect_once(client)
            except ReviewChannelPermanent as exc:
                log.error(
                    "Slack refused the app-level token in $%s (%s). Chat and review cards "
                    "keep working; clicks on the cards do not reach the gateway until the "
                    "token is fixed and the gateway restarted.",
                    self.token_env,
                    exc,
                )
                return
            except ReviewChannelRetryable as exc:
                wait = max(delay, exc.retry_after or 0.0)
                log.warning(
                    "could not connect to Slack in Socket Mode (%s); trying again in %.1fs",
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.retry_max_s)
            else:
                log.info("Slack: connected in Socket Mode; review clicks arrive over it")
                return

    async def _connect_once(self, client: SocketModeClient) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await client.web_client.apps_connections_open(app_token=self._token)
        except (SlackApiError, SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise connection_error(exc) from exc
        url = response.get("url")
        if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
            raise ReviewChannelRetryable(f"Slack {OPEN} answered no WebSocket URL")
        client.wss_uri = url
        try:
            # The SDK's connect() retries a URL that fails forever: bound it, and the
            # next attempt asks for a new one.
            async with asyncio.timeout(self.timeout_s):
                await client.connect()
        except TimeoutError:
            client.wss_uri = None
            raise ReviewChannelRetryable(
                f"the WebSocket Slack named did not open within {self.timeout_s:g}s"
            ) from None
