"""A stand-in for the Slack Web API: real HTTP on 127.0.0.1, scripted failures, recorded calls.

Methods: ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``,
``views.open``, ``conversations.members``. It checks the bot token (``invalid_auth``),
the channel (``channel_not_found``) and that an updated message exists
(``message_not_found``), like Slack. ``fail(method, ...)`` scripts the next answers
(429 with Retry-After, 5xx, any error code); ``stop()`` takes it down (connections
refused) and ``start()`` brings it back on the same port, with its calls and messages.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .servers import ServerThread

TOKEN = "xoxb-standin-token"
CHANNEL = "CREVIEW01"
BOT_USER = "UHITLBOT"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None
    at: float
    status: int  # the HTTP status the stand-in answered
    ok: bool  # and whether the answer was {"ok": true}


@dataclass
class Scripted:
    status: int = 200
    error: str | None = None
    retry_after: float | None = None


@dataclass
class SlackStandin:
    token: str = TOKEN
    channels: set[str] = field(default_factory=lambda: {CHANNEL})
    members: list[str] = field(default_factory=lambda: ["UREVIEWER1", "UREVIEWER2", BOT_USER])
    calls: list[Call] = field(default_factory=list)
    #: channel -> ts -> the message as last posted or updated
    messages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _scripts: dict[str, deque[Scripted]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: ServerThread | None = None
    port: int = 0

    # -- scripting and inspection ----------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        status: int = 200,
        error: str | None = None,
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls of ``method`` answer this failure."""
        with self._lock:
            queue = self._scripts.setdefault(method, deque())
            queue.extend(Scripted(status, error, retry_after) for _ in range(times))

    def calls_to(self, method: str, *, ok_only: bool = False) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (not ok_only or c.ok)]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Block until ``count`` successful calls of ``method`` arrived (or fail the test)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.calls_to(method, ok_only=True)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} successful {method} calls within {timeout}s, got "
                    f"{len(found)}: {[c.method for c in self.calls]}"
                )
            time.sleep(0.02)

    # -- the server ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Web API base URL, as ``[slack] api_url`` wants it."""
        return f"http://127.0.0.1:{self.port}/api/"

    def start(self) -> SlackStandin:
        server = ServerThread(self._app())
        server.config.port = self.port  # 0 the first time; the same port after stop()
        server.start()
        self.port = server.port
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> SlackStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _app(self) -> Starlette:
        async def api(request: Request) -> Response:
            method = request.path_params["method"]
            args: dict[str, Any] = dict(request.query_params)
            body = await request.body()
            if body:
                if request.headers.get("content-type", "").startswith("application/json"):
                    args.update(json.loads(body))
                else:
                    form = await request.form()
                    args.update({k: v for k, v in form.items() if isinstance(v, str)})
            auth = request.headers.get("authorization", "")
            token = auth.removeprefix("Bearer ").strip() or args.get("token")
            status, answer, headers = self._answer(method, args, token)
            with self._lock:
                self.calls.append(Call(method, args, token, time.time(), status, answer["ok"]))
            return JSONResponse(answer, status_code=status, headers=headers)

        return Starlette(routes=[Route("/api/{method}", api, methods=["GET", "POST"])])

    def _answer(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            queue = self._scripts.get(method)
            scripted = queue.popleft() if queue else None
        if scripted is not None:
            headers = {}
            if scripted.retry_after is not None:
                headers["Retry-After"] = str(scripted.retry_after)
            error = scripted.error or (
                "ratelimited" if scripted.status == 429 else "internal_error"
            )
            return scripted.status, {"ok": False, "error": error}, headers
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        answer: dict[str, Any] = handler(args)
        return 200, answer, {}

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://standin.slack.com/",
            "team": "Stand-in",
            "user": "hitl-review",
            "team_id": "TSTANDIN",
            "user_id": BOT_USER,
            "bot_id": "BSTANDIN",
        }

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = f"1700000000.{next(self._ts):06d}"
        with self._lock:
            self.messages.setdefault(channel, {})[ts] = dict(args)
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": args.get("text")}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        with self._lock:
            if ts not in self.messages.get(str(channel), {}):
                return {"ok": False, "error": "message_not_found"}
            self.messages[str(channel)][str(ts)] = {**self.messages[str(channel)][str(ts)], **args}
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not args.get("trigger_id") or not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "view": {"id": "VSTANDIN", **view}}

    def _conversations_members(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("channel") not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "members": list(self.members), "response_metadata": {"next_cursor": ""}}
