"""Streamed chat replies: relayed event by event as they come, or, on a risky route,
read whole and judged first, then relayed or held until a person decides."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import anyio
import orjson
from starlette.responses import Response, StreamingResponse

from middleware.errors import StoreUnavailable, UpstreamError
from middleware.flows.hold import Holds, Release
from middleware.flows.reply import ReplyFlow
from middleware.http.context import STORE_DOWN, ChatContext, hitl_object, upstream_failure
from middleware.http.draining import Draining
from middleware.http.responses import error_body, error_response
from middleware.http.streams import (
    DONE,
    HEARTBEAT,
    chunk,
    event,
    released_events,
)
from middleware.ports import Upstream, UpstreamReply, UpstreamRequest, UpstreamStream
from middleware.scoring.completion import StreamSummary, event_data, split_events
from middleware.scoring.scorer import Assessment
from middleware.scoring.tokens import TokenSigner

log = logging.getLogger("hitl.chat")


class StreamedReplies:
    def __init__(
        self,
        *,
        upstream: Upstream,
        replies: ReplyFlow,
        signer: TokenSigner,
        holds: Holds,
        stream_hitl_chunk: bool,
        heartbeat_s: float,
        draining: Draining,
    ) -> None:
        self.draining = draining
        self.upstream = upstream
        self.replies = replies
        self.signer = signer
        self.holds = holds
        self.stream_hitl_chunk = stream_hitl_chunk
        self.heartbeat_s = heartbeat_s

    async def relay(self, upstream_request: UpstreamRequest, ctx: ChatContext) -> Response:
        """Relay the upstream's events as they come, then the ``hitl`` chunk. Whatever ends
        the stream (its end, a broken upstream, the client leaving, shutdown), the text
        that was sent is recorded: in full as ``complete``, else as ``incomplete``."""
        if not await self.replies.store.ping():
            # Nothing sent yet: the reply could not be recorded, so it is not started.
            return error_response(503, STORE_DOWN, "store_unavailable")
        upstream_started = time.perf_counter()
        stream = await self._open(upstream_request)
        if isinstance(stream, Response):
            return stream
        token = self.signer.sign(ctx.reply_id)
        draining = self.draining

        async def record(folded: StreamSummary, status: str) -> Assessment:
            exchange = ctx.exchange(
                folded.finish(),
                stream.signals,
                folded.model,
                upstream_status=stream.status,
                upstream_ms=(time.perf_counter() - upstream_started) * 1000,
                stream=True,
                status=status,
            )
            return await self.replies(exchange)

        async def relay() -> AsyncIterator[bytes]:
            folded = StreamSummary()
            buffer = bytearray()
            status = "incomplete"
            recorded = False
            key = id(folded)
            draining.track(key, stream.aclose)
            try:
                try:
                    async for piece in stream.chunks():
                        buffer += piece
                        out = split(buffer)
                        if out:
                            yield b"".join(out)
                        # Folded once sent: the record holds what the client was given.
                        fold(out, folded)
                        if draining.expired:
                            log.warning("stream %s ended by shutdown", ctx.reply_id)
                            break
                    else:
                        # A stream that ended without a single chunk held no reply.
                        status = "complete" if folded.chunks else "incomplete"
                except UpstreamError as exc:
                    log.warning("stream %s broke midway: %s", ctx.reply_id, exc)
                finally:
                    draining.untrack(key)
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                try:
                    assessment = await record(folded, status)
                except StoreUnavailable as exc:
                    # Headers are sent: end with an error event (as OpenAI does), not a reset.
                    log.error("stream %s not recorded: %s", ctx.reply_id, exc)
                    yield b"data: " + error_body(503, STORE_DOWN, "store_unavailable") + b"\n\n"
                    return
                recorded = True
                # One write for the last two events (each write costs the server a send).
                if self.stream_hitl_chunk:
                    yield self._hitl_chunk(ctx, folded, token, assessment, status) + DONE
                else:
                    yield DONE
            finally:
                if not recorded:
                    # The client left (or the task was cancelled) mid-stream: what it was
                    # sent is still on record. Shielded: this runs inside a cancelled scope.
                    with anyio.CancelScope(shield=True):
                        try:
                            await record(folded, "incomplete")
                            log.info("stream %s cut short; recorded as incomplete", ctx.reply_id)
                        except StoreUnavailable as exc:
                            log.error("stream %s cut short and not recorded: %s", ctx.reply_id, exc)

        headers = {
            "x-hitl-reply-id": ctx.reply_id,
            "x-hitl-feedback-token": token,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)

    async def _open(self, upstream_request: UpstreamRequest) -> UpstreamStream | Response:
        """The upstream's open stream, or the answer to give when it failed to open."""
        try:
            opened = await self.upstream.open_stream(upstream_request)
        except UpstreamError as exc:
            return error_response(exc.status_code, str(exc), exc.code)
        if isinstance(opened, UpstreamReply):
            return upstream_failure(opened)
        return opened

    def _hitl_chunk(
        self,
        ctx: ChatContext,
        folded: StreamSummary,
        token: str,
        assessment: Assessment,
        status: str,
        release: Release | None = None,
    ) -> bytes:
        hitl = hitl_object(ctx.reply_id, token, assessment, release)
        if status != "complete":
            hitl["incomplete"] = True
        return event(
            chunk(
                folded.id or ctx.reply_id,
                folded.created or int(time.time()),
                folded.model or str(ctx.payload.get("model", "")),
                choices=[],
                hitl=hitl,
            )
        )

    async def judged(self, upstream_request: UpstreamRequest, ctx: ChatContext) -> Response:
        """A risky streamed request: read the whole upstream stream, judge it, and only
        then answer: relayed as it came, or held until a person decides."""
        upstream_started = time.perf_counter()
        stream = await self._open(upstream_request)
        if isinstance(stream, Response):
            return stream
        folded = StreamSummary()
        buffer = bytearray()
        events: list[bytes] = []
        status = "complete"
        try:
            async for piece in stream.chunks():
                buffer += piece
                out = split(buffer)
                fold(out, folded)
                events += out
        except UpstreamError as exc:
            status = "incomplete"
            log.warning("stream %s broke midway: %s", ctx.reply_id, exc)
        finally:
            await stream.aclose()
        exchange = ctx.exchange(
            folded.finish(),
            stream.signals,
            folded.model,
            upstream_status=stream.status,
            upstream_ms=(time.perf_counter() - upstream_started) * 1000,
            stream=True,
            status=status,
        )
        try:
            assessment = await self.replies(exchange)
        except StoreUnavailable as exc:
            # Nothing was sent yet: a plain 503, as for a JSON request.
            log.error("stream %s not delivered: %s", ctx.reply_id, exc)
            return error_response(503, STORE_DOWN, "store_unavailable")
        token = self.signer.sign(ctx.reply_id)
        held = assessment.decision.kind == "hold"

        async def answer() -> AsyncIterator[bytes]:
            release = None
            out = events
            if held:
                waiting = asyncio.create_task(
                    self.holds.wait(ctx.reply_id, exchange.summary.text),
                    name=f"hitl-hold-{ctx.reply_id}",
                )
                try:
                    while True:
                        done, _ = await asyncio.wait({waiting}, timeout=self.heartbeat_s)
                        if done:
                            break
                        yield HEARTBEAT
                finally:
                    if not waiting.done():
                        # The client left: nothing is released to anyone.
                        waiting.cancel()
                release = waiting.result()
                if release.released != "original":
                    out = released_events(
                        release,
                        chunk_id=folded.id or ctx.reply_id,
                        model=folded.model or str(ctx.payload.get("model", "")),
                    )
            yield b"".join(out)
            if self.stream_hitl_chunk:
                yield self._hitl_chunk(ctx, folded, token, assessment, status, release)
            yield DONE

        headers = {
            "x-hitl-reply-id": ctx.reply_id,
            "x-hitl-feedback-token": token,
            "x-hitl-decision": assessment.decision.kind,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        return StreamingResponse(answer(), media_type="text/event-stream", headers=headers)


def split(buffer: bytearray) -> list[bytes]:
    """The complete events in ``buffer`` (taken out of it); the upstream's ``[DONE]`` is
    held back: the gateway's own chunk goes before it."""
    return [sse for sse in split_events(buffer) if event_data(sse) != b"[DONE]"]


def fold(events: list[bytes], folded: StreamSummary) -> None:
    """Fold each event's chunk into ``folded`` (what the reply said so far)."""
    for sse in events:
        data = event_data(sse)
        if data is not None:
            # Not JSON, or a malformed chunk: relayed, not folded.
            with contextlib.suppress(ValueError, TypeError):
                folded.add(orjson.loads(data))
