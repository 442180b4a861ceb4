"""A stand-in for the Slack Web API: real HTTP on 127.0.0.1, scripted failures, recorded calls.

Methods: ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.delete``,
``chat.postEphemeral``, ``views.open``, ``conversations.members``,
``conversations.history``, and ``apps.connections.open`` (with the app-level token; the
URL comes from ``connections``, e.g. ``tests.support.socket_standin``). It checks the
bot token (``invalid_auth``), the channel
(``channel_not_found``) and that an updated or deleted message exists
(``message_not_found``), like Slack. Message ts are Slack-like ("1712345678.000123", the
time of posting). ``conversations.history`` answers newest first between ``oldest`` and
``latest`` (exclusive unless ``inclusive``), pages of at most ``limit`` (and of
``history_page_cap``) with ``has_more`` and ``response_metadata.next_cursor``, and each
message's ``metadata`` only with ``include_all_metadata``.

``fail(method, ...)`` scripts the next answers (429 with Retry-After, 5xx, any error
code). ``lose_answer(method, how=...)`` carries the next call out and then loses its
answer: ``"hang"`` never answers (until ``release()`` or ``stop()``), ``"drop"`` closes
the connection halfway through the answer. ``stop()`` takes it down (connections
refused) and ``start()`` brings it back on the same port, with its calls and messages.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.support.servers import ServerThread

TOKEN = "xoxb-standin-token"
APP_TOKEN = "xapp-1-ASTANDIN-standin-app-token"
CHANNEL = "CREVIEW01"
BOT_USER = "UHITLBOT"
BOT_ID = "BSTANDIN"

Lose = Literal["hang", "drop"]


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None
    at: float
    status: int  # the HTTP status the stand-in answered
    ok: bool  # and whether the answer was {"ok": true}
    lost: Lose | None = None  # carried out, but the answer never arrived whole


@dataclass
class Scripted:
    status: int = 200
    error: str | None = None
    retry_after: float | None = None
    #: carry the call out, then lose the answer this way
    lose: Lose | None = None


def ts_key(ts: str) -> tuple[int, int]:
    seconds, _, fraction = str(ts).partition(".")
    return int(seconds or 0), int((fraction + "000000")[:6])


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true")


class _Dropped(Response):
    """Half an answer, then the connection closes (the server cannot finish it)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})


@dataclass
class SlackStandin:
    token: str = TOKEN
    #: the app-level token ``apps.connections.open`` takes, and what issues its URLs
    app_token: str = APP_TOKEN
    connections: Callable[[], str] | None = None
    channels: set[str] = field(default_factory=lambda: {CHANNEL})
    members: list[str] = field(default_factory=lambda: ["UREVIEWER1", "UREVIEWER2", BOT_USER])
    calls: list[Call] = field(default_factory=list)
    #: channel -> ts -> the message as last posted or updated
    messages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _scripts: dict[str, deque[Scripted]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _last_ts: tuple[int, int] = (0, 0)
    _released: threading.Event = field(default_factory=threading.Event)
    _server: ServerThread | None = None
    port: int = 0
    #: ``conversations.history`` returns at most this many messages a page (Slack: 999)
    history_page_cap: int = 999
    #: how long a lost answer hangs at most (then it is answered, to nobody)
    hang_s: float = 30.0

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

    def lose_answer(self, method: str, *, how: Lose = "hang", times: int = 1) -> None:
        """The next ``times`` calls of ``method`` are carried out, but their answer is
        lost: it never comes (``hang``) or the connection drops halfway (``drop``)."""
        with self._lock:
            queue = self._scripts.setdefault(method, deque())
            queue.extend(Scripted(lose=how) for _ in range(times))

    def release(self) -> None:
        """Hanging answers are sent now (to clients that have long given up)."""
        self._released.set()

    def cards_for(self, reply_id: str, channel: str = CHANNEL) -> dict[str, dict[str, Any]]:
        """ts -> message of every card in ``channel`` whose metadata names ``reply_id``."""
        with self._lock:
            messages = dict(self.messages.get(channel, {}))
        return {
            ts: m
            for ts, m in messages.items()
            if ((m.get("metadata") or {}).get("event_payload") or {}).get("reply_id") == reply_id
        }

    def add_message(self, args: dict[str, Any], *, ts: str, channel: str = CHANNEL) -> None:
        """A message in the channel as if the bot had posted it at ``ts``."""
        with self._lock:
            self.messages.setdefault(channel, {})[ts] = dict(args)

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
        self._released.clear()
        server = ServerThread(self._app())
        server.config.port = self.port  # 0 the first time; the same port after stop()
        server.start()
        self.port = server.port
        self._server = server
        return self

    def stop(self) -> None:
        self._released.set()
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
            status, answer, headers, lose = self._answer(method, args, token)
            with self._lock:
                call = Call(method, args, token, time.time(), status, answer["ok"], lose)
                self.calls.append(call)
            if lose == "drop":
                return _Dropped(json.dumps(answer), media_type="application/json")
            if lose == "hang":
                await asyncio.to_thread(self._released.wait, self.hang_s)
            return JSONResponse(answer, status_code=status, headers=headers)

        return Starlette(routes=[Route("/api/{method}", api, methods=["GET", "POST"])])

    def _answer(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str], Lose | None]:
        with self._lock:
            queue = self._scripts.get(method)
            scripted = queue.popleft() if queue else None
        if scripted is not None and scripted.lose is None:
            headers = {}
            if scripted.retry_after is not None:
                headers["Retry-After"] = str(scripted.retry_after)
            error = scripted.error or (
                "ratelimited" if scripted.status == 429 else "internal_error"
            )
            return scripted.status, {"ok": False, "error": error}, headers, None
        lose = scripted.lose if scripted is not None else None
        if method == "apps.connections.open":
            return 200, self._apps_connections_open(token), {}, lose
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}, lose
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}, lose
        answer: dict[str, Any] = handler(args)
        return 200, answer, {}, lose

    def _apps_connections_open(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {"ok": False, "error": "not_authed"}
        if not token.startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        if token != self.app_token or self.connections is None:
            return {"ok": False, "error": "invalid_auth"}
        return {"ok": True, "url": self.connections()}

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://standin.slack.com/",
            "team": "Stand-in",
            "user": "hitl-review",
            "team_id": "TSTANDIN",
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
        }

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        with self._lock:
            # Slack's ts: the time of posting, to the microsecond, unique in the channel
            now = time.time_ns() // 1000
            key = max((now // 1_000_000, now % 1_000_000), self._next_after(self._last_ts))
            self._last_ts = key
            ts = f"{key[0]}.{key[1]:06d}"
            self.messages.setdefault(channel, {})[ts] = dict(args)
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": args.get("text")}}

    @staticmethod
    def _next_after(key: tuple[int, int]) -> tuple[int, int]:
        seconds, micros = key
        return (seconds + 1, 0) if micros == 999_999 else (seconds, micros + 1)

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        with self._lock:
            if ts not in self.messages.get(str(channel), {}):
                return {"ok": False, "error": "message_not_found"}
            self.messages[str(channel)][str(ts)] = {**self.messages[str(channel)][str(ts)], **args}
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        with self._lock:
            if self.messages.get(channel, {}).pop(ts, None) is None:
                return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": channel, "ts": ts}

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        inclusive = _truthy(args.get("inclusive"))
        oldest = ts_key(args.get("oldest") or "0")
        latest = ts_key(args["latest"]) if args.get("latest") else (2**62, 0)
        try:
            limit = min(max(1, int(args.get("limit") or 100)), 999, self.history_page_cap)
        except ValueError:
            return {"ok": False, "error": "invalid_limit"}
        start = None
        if args.get("cursor"):
            cursor = base64.b64decode(str(args["cursor"])).decode()
            if not cursor.startswith("next_ts:"):
                return {"ok": False, "error": "invalid_cursor"}
            start = ts_key(cursor.removeprefix("next_ts:"))
        with self._lock:
            stored = dict(self.messages.get(str(channel), {}))
        keys = sorted(((ts_key(ts), ts) for ts in stored), reverse=True)
        within = [
            ts
            for key, ts in keys
            if (oldest <= key <= latest if inclusive else oldest < key < latest)
            and (start is None or key <= start)
        ]
        page, rest = within[:limit], within[limit:]
        metadata = _truthy(args.get("include_all_metadata"))
        answer: dict[str, Any] = {
            "ok": True,
            "messages": [self._as_history(ts, stored[ts], metadata) for ts in page],
            "has_more": bool(rest),
            "pin_count": 0,
        }
        if rest:
            cursor = base64.b64encode(f"next_ts:{rest[0]}".encode()).decode()
            answer["response_metadata"] = {"next_cursor": cursor}
        return answer

    @staticmethod
    def _as_history(ts: str, posted: dict[str, Any], metadata: bool) -> dict[str, Any]:
        """A stored message as conversations.history shows it."""
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "ts": ts,
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "app_id": "ASTANDIN",
            "text": posted.get("text", ""),
        }
        if posted.get("blocks"):
            message["blocks"] = posted["blocks"]
        if metadata and isinstance(posted.get("metadata"), dict):
            message["metadata"] = posted["metadata"]
        return message

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
