"""``POST /v1/chat/completions``: read the request, forward it, answer with the reply
the reply flow judged (streams are ``http.streaming``'s)."""

from __future__ import annotations

import logging
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from middleware.errors import StoreUnavailable, UpstreamError
from middleware.flows.hold import Holds
from middleware.flows.reply import ReplyFlow
from middleware.http.bodies import BodyTooLarge, chat_payload, read_body
from middleware.http.context import (
    STORE_DOWN,
    ChatContext,
    end_user_of,
    hitl_object,
    relay_headers,
    released_completion,
    upstream_failure,
)
from middleware.http.draining import Draining
from middleware.http.headers import forward_headers
from middleware.http.responses import error_response
from middleware.http.streaming import StreamedReplies
from middleware.ports import Upstream, UpstreamRequest
from middleware.scoring.completion import read_completion
from middleware.scoring.policy import is_risky
from middleware.scoring.tokens import TokenSigner, new_reply_id

log = logging.getLogger("hitl.chat")


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
        holds: Holds,
        risky_models: frozenset[str] = frozenset(),
        draining: Draining,
        heartbeat_s: float = 10.0,
        request_logprobs: bool = False,
    ) -> None:
        self.upstream = upstream
        self.replies = replies
        self.signer = signer
        self.holds = holds
        self.api_key = api_key
        self.forward_client_auth = forward_client_auth
        self.max_body_bytes = max_body_bytes
        self.risky_models = risky_models
        self.request_logprobs = request_logprobs
        self.streams = StreamedReplies(
            upstream=upstream,
            replies=replies,
            signer=signer,
            holds=holds,
            stream_hitl_chunk=stream_hitl_chunk,
            heartbeat_s=heartbeat_s,
            draining=draining,
        )

    def _headers(self, request: Request) -> list[tuple[str, str]]:
        return forward_headers(
            request.headers.items(),
            api_key=self.api_key,
            forward_client_auth=self.forward_client_auth,
        )

    async def completions(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(request, self.max_body_bytes)
        except BodyTooLarge as exc:
            return error_response(413, str(exc), "body_too_large")
        payload = chat_payload(body)  # strict JSON and the fields the gateway reads
        if isinstance(payload, Response):
            return payload
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
            end_user=end_user_of(payload, request),
            risky=is_risky(
                request.headers.get("x-hitl-risk"),
                str(payload.get("model") or ""),
                self.risky_models,
            ),
            started=started,
        )
        if payload.get("stream") is True:
            if context.risky:
                # A risky reply may be held: nothing is relayed before it is judged.
                return await self.streams.judged(upstream_request, context)
            return await self.streams.relay(upstream_request, context)
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
            return upstream_failure(reply)
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
        release = None
        if assessment.decision.kind == "hold":
            # The client waits for a person; only what they decided leaves.
            release = await self.holds.wait(ctx.reply_id, exchange.summary.text)
            completion = released_completion(completion, release)
        completion["hitl"] = hitl_object(ctx.reply_id, token, assessment, release)
        headers = relay_headers(reply)
        headers.update(
            {
                "x-hitl-reply-id": ctx.reply_id,
                "x-hitl-feedback-token": token,
                "x-hitl-confidence": f"{assessment.confidence:.4f}",
                "x-hitl-decision": assessment.decision.kind,
            }
        )
        try:
            encoded = orjson.dumps(completion)
        except orjson.JSONEncodeError:
            # Nested past what JSON encoders take: nothing a client could read either.
            return error_response(
                502, "the upstream model answered with JSON nested too deep", "upstream_error"
            )
        return Response(encoded, media_type="application/json", headers=headers)
