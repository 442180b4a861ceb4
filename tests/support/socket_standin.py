"""A stand-in for Slack's Socket Mode server: real WebSockets on 127.0.0.1 (aiohttp's
server, on its own thread and loop), one-time tickets, acknowledgements recorded with
their timing.

``url()`` issues a ticket URL the way ``apps.connections.open`` answers it; hand it to
the Web API stand-in (``SlackStandin(connections=sockets.url)``). A client that opens a
valid ticket gets Slack's ``hello``; a used or unknown ticket is refused (401).
``send(payload)`` sends an ``interactive`` envelope to the newest connection and
``wait_ack(envelope_id)`` waits for the client's ``{"envelope_id": ...}``, with the delay
between the two. ``disconnect()`` sends Slack's ``disconnect`` (a refresh), after which
a client connects again with a new ticket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

APP_ID = "ASTANDIN"

log = logging.getLogger("tests.socket_standin")


@dataclass(frozen=True)
class Ack:
    envelope_id: str
    #: what the client sent besides the envelope id (a response payload), if anything
    payload: dict[str, Any] | None
    sent_at: float  # time.monotonic() when the envelope went out
    acked_at: float  # ... and when its acknowledgement came in

    @property
    def delay_s(self) -> float:
        return self.acked_at - self.sent_at


class SocketStandin:
    def __init__(self) -> None:
        self.port = 0
        #: every JSON message the clients sent, in order
        self.received: list[dict[str, Any]] = []
        self.acks: dict[str, Ack] = {}
        #: connections that got their ``hello``, ever (a reconnect counts again)
        self.connections = 0
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._sent: dict[str, float] = {}
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- what the tests use ----------------------------------------------------------

    def url(self) -> str:
        """A new one-time WebSocket URL, as ``apps.connections.open`` answers it."""
        ticket = secrets.token_hex(8)
        with self._changed:
            self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={APP_ID}"

    def wait_connected(self, count: int = 1, timeout: float = 5.0) -> None:
        """Until ``count`` connections got their ``hello`` (or fail the test)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.connections >= count, timeout):
                raise AssertionError(
                    f"expected {count} Socket Mode connections within {timeout}s, "
                    f"got {self.connections}"
                )

    @property
    def open_sockets(self) -> int:
        with self._changed:
            return len(self._sockets)

    def send(self, payload: dict[str, Any], *, kind: str = "interactive") -> str:
        """An envelope of ``kind`` around ``payload`` to the newest connection; its id.
        As Slack does, only a form submission's ack may carry an answer (``errors``)."""
        envelope_id = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": payload.get("type") == "view_submission",
        }
        self._push(envelope, envelope_id)
        return envelope_id

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's warning that it is about to close the connection."""
        self._push({"type": "disconnect", "reason": reason, "debug_info": {"host": "standin"}})

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        with self._changed:
            if not self._changed.wait_for(lambda: envelope_id in self.acks, timeout):
                raise AssertionError(f"envelope {envelope_id} was not acknowledged in {timeout}s")
            return self.acks[envelope_id]

    # -- the server ------------------------------------------------------------------

    def start(self) -> SocketStandin:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10) or not self.port:
            raise RuntimeError("the Socket Mode stand-in did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> SocketStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._boot())
            ready.set()
            loop.run_forever()
        finally:
            loop.close()

    async def _boot(self) -> None:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        with self._changed:
            sockets = list(self._sockets)
        for ws in sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _push(self, message: dict[str, Any], envelope_id: str | None = None) -> None:
        with self._changed:
            if not self._sockets:
                raise AssertionError("no Socket Mode client is connected")
            ws = self._sockets[-1]

        async def push() -> None:
            if envelope_id is not None:
                with self._changed:
                    self._sent[envelope_id] = time.monotonic()
            await ws.send_str(json.dumps(message))

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(push(), self._loop).result(timeout=5)

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._changed:
            valid = ticket in self._tickets
            self._tickets.discard(ticket)
        if not valid:
            return web.Response(status=401, text="invalid or used ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        hello = {
            "type": "hello",
            "num_connections": 1,
            "debug_info": {"host": "standin", "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        }
        await ws.send_str(json.dumps(hello))
        with self._changed:
            self._sockets.append(ws)
            self.connections += 1
            self._changed.notify_all()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._record(json.loads(message.data), time.monotonic())
        finally:
            with self._changed:
                self._sockets.remove(ws)
                self._changed.notify_all()
        return ws

    def _record(self, data: dict[str, Any], at: float) -> None:
        with self._changed:
            self.received.append(data)
            envelope_id = data.get("envelope_id")
            if envelope_id in self._sent and envelope_id not in self.acks:
                ack = self.acks[envelope_id] = Ack(
                    envelope_id=envelope_id,
                    payload=data.get("payload"),
                    sent_at=self._sent[envelope_id],
                    acked_at=at,
                )
                log.info("envelope %s acknowledged after %.1f ms", envelope_id, ack.delay_s * 1e3)
            self._changed.notify_all()
