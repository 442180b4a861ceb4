"""One chat request as the endpoints see it, and how an upstream failure is answered."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from middleware.flows.reply import ChatExchange
from middleware.http.responses import error_response
from middleware.ports import UpstreamReply
from middleware.scoring.completion import ReplySummary

STORE_DOWN = "the gateway could not record this reply, so it was not delivered; retry shortly"


def relay_headers(reply: UpstreamReply) -> dict[str, str]:
    return {k: v for k, v in reply.headers if k not in ("content-type",)}


def upstream_failure(reply: UpstreamReply) -> Response:
    """A non-2xx upstream answer: 4xx is the client's error and passes through unchanged."""
    if reply.status < 500:
        media = dict(reply.headers).get("content-type", "application/json")
        return Response(
            reply.body,
            status_code=reply.status,
            media_type=media,
            headers=relay_headers(reply),
        )
    return error_response(
        502,
        f"the upstream model answered HTTP {reply.status}; the gateway did not retry",
        "upstream_error",
    )


class ChatContext:
    """One chat request as the endpoint sees it, before the upstream answers."""

    __slots__ = ("end_user", "payload", "reply_id", "risky", "started")

    def __init__(
        self,
        *,
        reply_id: str,
        payload: dict[str, Any],
        end_user: str | None,
        risky: bool,
        started: float,
    ) -> None:
        self.reply_id = reply_id
        self.payload = payload
        self.end_user = end_user
        self.risky = risky
        self.started = started

    def exchange(
        self,
        summary: ReplySummary,
        signals: dict[str, float],
        model: Any,
        *,
        upstream_status: int,
        upstream_ms: float,
        stream: bool = False,
        status: str = "complete",
    ) -> ChatExchange:
        """The finished exchange, for the reply flow."""
        return ChatExchange(
            reply_id=self.reply_id,
            payload=self.payload,
            end_user=self.end_user,
            risky=self.risky,
            started=self.started,
            summary=summary,
            signals=signals,
            model=str(model or self.payload.get("model") or ""),
            stream=stream,
            status=status,
            upstream_status=upstream_status,
            upstream_ms=upstream_ms,
        )


def end_user_of(payload: dict[str, Any], request: Request) -> str | None:
    header = request.headers.get("x-hitl-user")
    if header:
        return header[:200]
    user = payload.get("user")
    return user[:200] if isinstance(user, str) and user else None
