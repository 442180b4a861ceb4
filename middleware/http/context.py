"""One chat request as the endpoints see it: its context, the ``hitl`` object its answer
carries, a held reply's released answer, and how an upstream failure is answered."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from middleware.flows.hold import Release
from middleware.flows.reply import ChatExchange
from middleware.http.responses import error_response
from middleware.ports import UpstreamReply
from middleware.scoring.completion import ReplySummary
from middleware.scoring.scorer import Assessment

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


def hitl_object(
    reply_id: str, token: str, assessment: Assessment, release: Release | None = None
) -> dict[str, Any]:
    hitl: dict[str, Any] = {
        "reply_id": reply_id,
        "feedback_token": token,
        "confidence": round(assessment.confidence, 4),
        "decision": assessment.decision.kind,
        "ask_feedback": assessment.decision.ask_feedback,
    }
    if release is not None:
        hitl["released"] = release.released
        if release.timed_out:
            hitl["timed_out"] = True
    return hitl


def released_completion(completion: dict[str, Any], release: Release) -> dict[str, Any]:
    """The JSON answer a held client receives: the upstream's, or one choice with the
    correction or the fallback (no tool calls, no other choices: none was approved)."""
    if release.released == "original":
        return completion
    return {
        **completion,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": release.text},
                "finish_reason": "stop",
            }
        ],
    }
