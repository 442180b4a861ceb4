"""The embedded upstream: answers questions about hitl-gateway from a shipped knowledge base.

The retriever (``knowledge``) picks the closest entry; this module returns its answer in
the OpenAI Chat Completions wire format, JSON or SSE. The cosine similarity of the match
is exposed as the ``retrieval_score`` signal, one more feature for scoring. It needs no
key and no network, so the whole loop runs offline.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.upstream.knowledge import KBEntry, Match, Retriever, load_knowledge_base
from middleware.errors import ConfigError, UpstreamUnavailable
from middleware.ports import UpstreamReply, UpstreamRequest

__all__ = ["NO_ANSWER", "LocalStream", "LocalUpstream", "query_text", "split_pieces"]

MODEL_ID = "local"
OWNED_BY = "hitl-gateway"
MAX_CHOICES = 128  # OpenAI's own limit on n
_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
# One fixed creation time, so the model list is the same on every call.
_CREATED = 1735689600  # 2025-01-01

NO_ANSWER = (
    "I don't have a good answer to that. I only know about hitl-gateway itself: what it "
    "does, installing it and running `hitl serve`, config.toml, using it with the openai "
    "client, the `hitl` object and X-HITL-* headers, thumbs-up/down feedback, confidence "
    "and decisions (deliver, ask, escalate, hold), the review budget, review in Slack, how "
    "the model learns, reports and metrics, PostgreSQL, privacy and security. Try asking, "
    'for example, "How do I send a thumbs up or thumbs down?"'
)


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def query_text(messages: Sequence[object]) -> str:
    """The last user message's text (content-part arrays read as their text parts)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def split_pieces(text: str, words: int = 4) -> list[str]:
    """Cut ``text`` into pieces of a few words each; the pieces join back to ``text``."""
    tokens = re.split(r"(?<=\s)(?=\S)", text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]


def _count_tokens(text: str) -> int:
    # An estimate (words and punctuation), not a real tokenizer: there is no model here.
    return len(re.findall(r"\w+|[^\w\s]", text))


def _error(
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> UpstreamReply:
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }
    return UpstreamReply(status, [*_JSON, *headers], orjson.dumps(body))


@dataclass(slots=True)
class _Completion:
    """One validated chat request and its answer, rendered as JSON or as SSE."""

    id: str
    created: int
    model: str
    n: int
    content: str
    similarity: float
    stream: bool
    include_usage: bool
    usage: dict[str, int]

    @property
    def signals(self) -> dict[str, float]:
        return {"retrieval_score": self.similarity}

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": self.content},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                    for index in range(self.n)
                ],
                "usage": self.usage,
            }
        )

    def events(self, words_per_piece: int) -> Iterator[bytes]:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
            }
            if self.include_usage:
                data["usage"] = None
            data.update(extra)
            return b"data: " + orjson.dumps(data) + b"\n\n"

        def choice(index: int, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

        for index in range(self.n):
            yield chunk([choice(index, {"role": "assistant", "content": ""})])
            for piece in split_pieces(self.content, words_per_piece):
                yield chunk([choice(index, {"content": piece})])
            yield chunk([choice(index, {}, "stop")])
        if self.include_usage:
            yield chunk([], usage=self.usage)
        yield b"data: [DONE]\n\n"


class LocalStream:
    """A streamed local answer: one SSE event per ``chunks()`` step."""

    def __init__(self, events: Iterator[bytes], signals: dict[str, float], delay_s: float) -> None:
        self.status = 200
        self.headers = list(_SSE)
        self.signals = signals
        self._events = events
        self._delay_s = delay_s
        self._iterator: AsyncGenerator[bytes, None] | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        if self._iterator is None:
            self._iterator = self._iterate()
        return self._iterator

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        for position, event in enumerate(self._events):
            if position and self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield event

    async def aclose(self) -> None:
        # Closing the generator runs no more of it; an abandoned one would be finalised
        # later by the loop's asyncgen hooks, at a time nobody chose.
        if self._iterator is not None:
            await self._iterator.aclose()


class LocalUpstream:
    """The embedded default upstream (``[upstream] kind = "local"``)."""

    name = "local"

    def __init__(
        self,
        *,
        min_similarity: float = 0.2,
        stream_delay_s: float = 0.0,
        words_per_piece: int = 4,
        knowledge_base: Sequence[KBEntry] | None = None,
    ) -> None:
        if not 0.0 <= min_similarity <= 1.0:
            raise ConfigError(
                f"local upstream: min_similarity must be in [0, 1] (got {min_similarity})"
            )
        if stream_delay_s < 0 or not math.isfinite(stream_delay_s):
            raise ConfigError(f"local upstream: stream_delay_s must be >= 0 (got {stream_delay_s})")
        if words_per_piece < 1:
            raise ConfigError(
                f"local upstream: words_per_piece must be >= 1 (got {words_per_piece})"
            )
        self.min_similarity = min_similarity
        self.stream_delay_s = stream_delay_s
        self.words_per_piece = words_per_piece
        self._knowledge_base = knowledge_base
        self._retriever: Retriever | None = None

    async def start(self) -> None:
        if self._retriever is not None:
            return
        entries = self._knowledge_base
        if entries is None:
            entries = await asyncio.to_thread(load_knowledge_base)
        self._retriever = await asyncio.to_thread(Retriever.fit, entries)

    async def aclose(self) -> None:
        self._retriever = None

    def answer(self, query: str) -> Match:
        """The best entry for ``query``; ``entry`` is None below ``min_similarity``."""
        if self._retriever is None:
            raise UpstreamUnavailable("the local upstream is not started (call start() first)")
        match = self._retriever.best(query)
        if match.similarity < self.min_similarity:
            return Match(None, match.similarity)
        return match

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        routed = self._route(request)
        if isinstance(routed, UpstreamReply):
            return routed
        if routed.stream:
            # A streaming request read whole: the whole answer is the event stream.
            return UpstreamReply(
                200, list(_SSE), b"".join(routed.events(self.words_per_piece)), routed.signals
            )
        return UpstreamReply(200, list(_JSON), routed.body(), routed.signals)

    async def open_stream(self, request: UpstreamRequest) -> LocalStream | UpstreamReply:
        routed = self._route(request)
        if isinstance(routed, UpstreamReply):
            return routed
        return LocalStream(routed.events(self.words_per_piece), routed.signals, self.stream_delay_s)

    def _route(self, request: UpstreamRequest) -> _Completion | UpstreamReply:
        path = "/" + request.path.strip("/")
        method = request.method.upper()
        if path == "/chat/completions":
            if method != "POST":
                message = f"{method} is not allowed on /v1{path}; use POST."
                return _error(405, message, "method_not_allowed", headers=[("allow", "POST")])
            return self._complete(request)
        if path == "/models" and method == "GET":
            return UpstreamReply(
                200, list(_JSON), orjson.dumps({"object": "list", "data": [_model_object()]})
            )
        if path == f"/models/{MODEL_ID}" and method == "GET":
            return UpstreamReply(200, list(_JSON), orjson.dumps(_model_object()))
        return _error(404, f"Unknown request URL: {method} /v1{path}", "not_found")

    def _complete(self, request: UpstreamRequest) -> _Completion | UpstreamReply:
        payload: object = request.payload
        if payload is None:
            try:
                payload = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                return _error(400, "The request body is not valid JSON.", "invalid_json")
        if not isinstance(payload, Mapping):
            return _error(400, "The request body must be a JSON object.", "invalid_type")
        messages = payload.get("messages")
        if messages is None:
            return _error(
                400,
                "Missing required parameter: 'messages'.",
                "missing_required_parameter",
                "messages",
            )
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array.", "invalid_type", "messages")
        n = payload.get("n", 1)
        if n is None:
            n = 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
            return _error(
                400, f"'n' must be an integer from 1 to {MAX_CHOICES}.", "invalid_value", "n"
            )
        stream = payload.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            return _error(400, "'stream' must be a boolean.", "invalid_type", "stream")
        options = payload.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        model = payload.get("model")

        match = self.answer(query_text(messages))
        content = match.entry.answer if match.entry is not None else NO_ANSWER
        prompt_tokens = sum(
            _count_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        completion_tokens = _count_tokens(content) * n
        return _Completion(
            id="chatcmpl-" + uuid.uuid4().hex,
            created=int(time.time()),
            model=model if isinstance(model, str) and model else MODEL_ID,
            n=n,
            content=content,
            similarity=round(match.similarity, 6),
            stream=bool(stream),
            include_usage=include_usage,
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        )


def _model_object() -> dict[str, object]:
    return {"id": MODEL_ID, "object": "model", "created": _CREATED, "owned_by": OWNED_BY}
