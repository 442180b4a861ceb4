"""``POST /v1/chat/completions`` and the plain ``/v1/*`` passthrough."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from middleware.errors import StoreUnavailable, UpstreamError
from middleware.flows.reply import ChatExchange, ReplyFlow
from middleware.http.bodies import BodyTooLarge, read_body
from middleware.http.headers import forward_headers
from middleware.http.responses import error_body, error_response
from middleware.ports import Upstream, UpstreamReply, UpstreamRequest
from middleware.scoring.completion import (
    ReplySummary,
    StreamSummary,
    event_data,
    read_completion,
    split_events,
)
from middleware.scoring.scorer import Assessment
from middleware.scoring.tokens import TokenSigner, new_reply_id

log = logging.getLogger("hitl.chat")

STORE_DOWN = "the gateway could not record this reply, so it was not delivered; retry shortly"
# Routes the gateway answers itself: another method on them is a 405, never forwarded.
OWN_ROUTES = frozenset({"/chat/completions", "/feedback"})
OWN_PREFIXES = ("/replies/", "/reviews/")


def hitl_object(reply_id: str, token: str, assessment: Assessment) -> dict[str, Any]:
    return {
        "reply_id": reply_id,
        "feedback_token": token,
        "confidence": round(assessment.confidence, 4),
        "decision": assessment.decision.kind,
        "ask_feedback": assessment.decision.ask_feedback,
    }


def _relay_headers(reply: UpstreamReply) -> dict[str, str]:
    return {k: v for k, v in reply.headers if k not in ("content-type",)}


def _upstream_failure(reply: UpstreamReply) -> Response:
    """A non-2xx upstream answer: 4xx is the client's error and passes through unchanged."""
    if reply.status < 500:
        media = dict(reply.headers).get("content-type", "application/json")
        return Response(
            reply.body,
            status_code=reply.status,
            media_type=media,
            headers=_relay_headers(reply),
        )
    return error_response(
        502,
        f"the upstream model answered HTTP {reply.status}; the gateway did not retry",
        "upstream_error",
    )


class ChatEndpoint:
    """The HTTP side of a chat request: read it, forward it, relay the answer; the
    reply flow scores, decides and records it."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        replies: ReplyFlow,
        signer: TokenSigner,
        api_key: str | None,
        forward_client_auth: bool,
        max_body_bytes: int,
        stream_hitl_chunk: bool,
        request_logprobs: bool = False,
    ) -> None:
        self.upstream = upstream
        self.request_logprobs = request_logprobs
        self.replies = replies
        self.signer = signer
        self.api_key = api_key
        self.forward_client_auth = forward_client_auth
        self.max_body_bytes = max_body_bytes
        self.stream_hitl_chunk = stream_hitl_chunk

    def _headers(self, request: Request) -> list[tuple[str, str]]:
        return forward_headers(
            request.headers.items(),
            api_key=self.api_key,
            forward_client_auth=self.forward_client_auth,
        )

    async def passthrough(self, request: Request) -> Response:
        """Other ``/v1/*`` routes (models, embeddings...): forwarded, not scored."""
        try:
            body = await read_body(request, self.max_body_bytes)
        except BodyTooLarge as exc:
            return error_response(413, str(exc), "body_too_large")
        path = request.url.path.removeprefix("/v1")
        if path in OWN_ROUTES or path.startswith(OWN_PREFIXES):
            return error_response(
                405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
            )
        if any(segment in (".", "..") for segment in path.split("/")):
            # The upstream client would normalise it into another route, unscored.
            return error_response(404, f"no route for {request.url.path}", "not_found")
        upstream_request = UpstreamRequest(
            request.method, path, request.url.query, self._headers(request), body
        )
        try:
            reply = await self.upstream.send(upstream_request)
        except UpstreamError as exc:
            return error_response(exc.status_code, str(exc), exc.code)
        if reply.status >= 500:
            return _upstream_failure(reply)
        media = dict(reply.headers).get("content-type")
        return Response(
            reply.body, status_code=reply.status, media_type=media, headers=_relay_headers(reply)
        )

    async def completions(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(request, self.max_body_bytes)
        except BodyTooLarge as exc:
            return error_response(413, str(exc), "body_too_large")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return error_response(
                400, f"the request body is not valid JSON ({exc})", "invalid_json"
            )
        if not isinstance(payload, dict):
            return error_response(400, "the request body must be a JSON object", "invalid_request")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return error_response(
                400,
                "'messages' must be a non-empty array of messages",
                "invalid_request",
                param="messages",
            )
        if self.request_logprobs and "logprobs" not in payload:
            # Token log-probabilities are a feature; the body is re-encoded only then.
            payload["logprobs"] = True
            body = orjson.dumps(payload)
        upstream_request = UpstreamRequest(
            "POST", "/chat/completions", "", self._headers(request), body, payload
        )
        context = ChatContext(
            reply_id=new_reply_id(),
            payload=payload,
            end_user=_end_user(payload, request),
            risky=request.headers.get("x-hitl-risk", "").lower() == "high",
            started=started,
        )
        if payload.get("stream") is True:
            return await self._stream(upstream_request, context)
        return await self.complete(upstream_request, context)

    async def complete(self, upstream_request: UpstreamRequest, ctx: ChatContext) -> Response:
        """A non-streaming exchange: forward, score, decide, record, answer."""
        upstream_started = time.perf_counter()
        try:
            reply = await self.upstream.send(upstream_request)
        except UpstreamError as exc:
            return error_response(exc.status_code, str(exc), exc.code)
        upstream_ms = (time.perf_counter() - upstream_started) * 1000
        if reply.status >= 300:
            return _upstream_failure(reply)
        try:
            completion = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return error_response(
                502, "the upstream model answered with a body that is not JSON", "upstream_error"
            )
        if not isinstance(completion, dict):
            return error_response(
                502, "the upstream model answered with a non-object", "upstream_error"
            )
        exchange = ctx.exchange(
            read_completion(completion),
            reply.signals,
            completion.get("model"),
            upstream_status=reply.status,
            upstream_ms=upstream_ms,
        )
        try:
            assessment = await self.replies(exchange)
        except StoreUnavailable as exc:
            log.error("reply %s not delivered: %s", ctx.reply_id, exc)
            return error_response(503, STORE_DOWN, "store_unavailable")
        token = self.signer.sign(ctx.reply_id)
        completion["hitl"] = hitl_object(ctx.reply_id, token, assessment)
        headers = _relay_headers(reply)
        headers.update(
            {
                "x-hitl-reply-id": ctx.reply_id,
                "x-hitl-feedback-token": token,
                "x-hitl-confidence": f"{assessment.confidence:.4f}",
                "x-hitl-decision": assessment.decision.kind,
            }
        )
        return Response(orjson.dumps(completion), media_type="application/json", headers=headers)

    async def _stream(self, upstream_request: UpstreamRequest, ctx: ChatContext) -> Response:
        upstream_started = time.perf_counter()
        try:
            opened = await self.upstream.open_stream(upstream_request)
        except UpstreamError as exc:
            return error_response(exc.status_code, str(exc), exc.code)
        if isinstance(opened, UpstreamReply):
            return _upstream_failure(opened)
        stream = opened
        token = self.signer.sign(ctx.reply_id)

        async def relay() -> AsyncIterator[bytes]:
            folded = StreamSummary()
            buffer = bytearray()
            status = "complete"
            recorded = False
            try:
                try:
                    async for chunk in stream.chunks():
                        buffer += chunk
                        out = []
                        for event in split_events(buffer):
                            data = event_data(event)
                            if data == b"[DONE]":
                                continue  # held back: our chunk goes before it
                            if data is not None:
                                # Not JSON, or a malformed chunk: relayed, not folded.
                                with contextlib.suppress(ValueError, TypeError):
                                    folded.add(orjson.loads(data))
                            out.append(event)
                        if out:
                            yield b"".join(out)
                except UpstreamError as exc:
                    status = "incomplete"
                    log.warning("stream %s broke midway: %s", ctx.reply_id, exc)
                finally:
                    await stream.aclose()
                upstream_ms = (time.perf_counter() - upstream_started) * 1000
                exchange = ctx.exchange(
                    folded.finish(),
                    stream.signals,
                    folded.model,
                    upstream_status=stream.status,
                    upstream_ms=upstream_ms,
                    stream=True,
                    status=status,
                )
                try:
                    assessment = await self.replies(exchange)
                except StoreUnavailable as exc:
                    # Headers are sent: end with an error event (as OpenAI does), not a reset.
                    log.error("stream %s not recorded: %s", ctx.reply_id, exc)
                    yield b"data: " + error_body(503, STORE_DOWN, "store_unavailable") + b"\n\n"
                    return
                recorded = True
                if self.stream_hitl_chunk:
                    hitl = hitl_object(ctx.reply_id, token, assessment)
                    if status != "complete":
                        hitl["incomplete"] = True
                    final = {
                        "id": folded.id or ctx.reply_id,
                        "object": "chat.completion.chunk",
                        "created": folded.created or int(time.time()),
                        "model": folded.model or str(ctx.payload.get("model", "")),
                        "choices": [],
                        "hitl": hitl,
                    }
                    yield b"data: " + orjson.dumps(final) + b"\n\n"
                yield b"data: [DONE]\n\n"
            finally:
                if not recorded:
                    log.warning("stream %s ended before it was recorded", ctx.reply_id)

        headers = {
            "x-hitl-reply-id": ctx.reply_id,
            "x-hitl-feedback-token": token,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)


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


def _end_user(payload: dict[str, Any], request: Request) -> str | None:
    header = request.headers.get("x-hitl-user")
    if header:
        return header[:200]
    user = payload.get("user")
    return user[:200] if isinstance(user, str) and user else None
