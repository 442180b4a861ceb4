"""The embedded upstream: answers questions about hitl-gateway from a shipped knowledge base.

A TF-IDF retriever over the knowledge base's questions (word and character n-grams, so
typos and inflections still match) picks the closest entry and returns its answer in the
OpenAI Chat Completions wire format, JSON or SSE. The cosine similarity of the match is
exposed as the ``retrieval_score`` signal, one more feature for scoring. It needs no key
and no network, so the whole loop runs offline.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from middleware.errors import ConfigError, UpstreamUnavailable
from middleware.ports import UpstreamReply, UpstreamRequest

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = [
    "KBEntry",
    "LocalStream",
    "LocalUpstream",
    "Match",
    "Retriever",
    "load_knowledge_base",
    "query_text",
    "split_pieces",
]

MODEL_ID = "local"
OWNED_BY = "hitl-gateway"
MAX_CHOICES = 128  # OpenAI's own limit on n
_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_CACHE_SIZE = 1024
_MAX_QUERY_CHARS = 1000
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


@dataclass(frozen=True, slots=True)
class KBEntry:
    id: str
    question: str
    answer: str
    alt_questions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    entry: KBEntry | None
    similarity: float


def load_knowledge_base(raw: str | bytes | None = None) -> list[KBEntry]:
    """Parse and check a knowledge base (the shipped ``local_kb.json`` when ``raw`` is None)."""
    if raw is None:
        raw = resources.files("adapters.upstream").joinpath("local_kb.json").read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"local knowledge base is not valid JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ConfigError("local knowledge base must be a non-empty JSON array of entries")
    entries: list[KBEntry] = []
    seen: set[str] = set()
    for position, item in enumerate(data):
        where = f"local knowledge base entry {position}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object")
        for key in ("id", "question", "answer"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"{where}: {key!r} must be a non-empty string")
        alts = item.get("alt_questions", [])
        if not isinstance(alts, list) or not all(isinstance(a, str) and a.strip() for a in alts):
            raise ConfigError(f"{where}: 'alt_questions' must be a list of non-empty strings")
        if item["id"] in seen:
            raise ConfigError(f"{where}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        entries.append(KBEntry(item["id"], item["question"], item["answer"], tuple(alts)))
    return entries


class _Space:
    """One fitted TF-IDF space, applied to a query without scikit-learn's per-call overhead.

    ``TfidfVectorizer.transform`` costs about half a millisecond per call in input checks
    and sparse bookkeeping; the same arithmetic on one short query takes tens of microseconds.
    """

    def __init__(self, vectorizer: TfidfVectorizer, offset: int) -> None:
        self.vectorizer = vectorizer
        self.analyze = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.idf: np.ndarray = vectorizer.idf_
        self.offset = offset

    def vector(self, text: str) -> dict[int, float]:
        counts: dict[int, int] = {}
        for term in self.analyze(text):
            column = self.vocabulary.get(term)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        # sublinear tf, idf, then L2: what TfidfVectorizer(sublinear_tf=True) computes
        weights = {c: (1.0 + math.log(n)) * float(self.idf[c]) for c, n in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {self.offset + c: w / norm for c, w in weights.items()} if norm else {}


class Retriever:
    """Cosine similarity over TF-IDF vectors of every question and alternative question.

    Word n-grams (stop words removed) carry the topic; character n-grams forgive typos
    and inflections. Each space is L2-normalised and they weigh the same, so a similarity
    is the mean of the two cosines, in [0, 1].
    """

    def __init__(
        self,
        entries: Sequence[KBEntry],
        spaces: Sequence[_Space],
        matrix: np.ndarray,
        rows: Sequence[int],
    ) -> None:
        self.entries = list(entries)
        self.spaces = list(spaces)
        self._matrix = matrix  # features x questions, dense: a few MB, fast row gathers
        self._rows = list(rows)
        self._cache: OrderedDict[str, Match] = OrderedDict()

    @classmethod
    def fit(cls, entries: Sequence[KBEntry]) -> Retriever:
        # Imported here: scikit-learn takes about half a second to import, and a gateway
        # serving a remote upstream never needs it.
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts: list[str] = []
        rows: list[int] = []
        for index, entry in enumerate(entries):
            for text in (entry.question, *entry.alt_questions):
                texts.append(text)
                rows.append(index)
        words = TfidfVectorizer(
            analyzer="word", ngram_range=(1, 2), sublinear_tf=True, stop_words="english"
        )
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        blocks = [words.fit_transform(texts), chars.fit_transform(texts)]
        matrix = hstack(blocks).T.toarray().astype(np.float32)
        spaces = [_Space(words, 0), _Space(chars, blocks[0].shape[1])]
        return cls(entries, spaces, matrix, rows)

    def similarities(self, query: str) -> np.ndarray:
        """Similarity of ``query`` to every question row (not yet grouped by entry)."""
        vector: dict[int, float] = {}
        for space in self.spaces:
            vector.update(space.vector(query))
        if not vector:
            return np.zeros(self._matrix.shape[1], dtype=np.float32)
        columns = np.fromiter(vector.keys(), dtype=np.intp, count=len(vector))
        values = np.fromiter(vector.values(), dtype=np.float32, count=len(vector))
        scores: np.ndarray = values @ self._matrix[columns]
        return scores / len(self.spaces)

    def best(self, query: str) -> Match:
        # Only the start of a long message is looked at: analysing a pasted document
        # character by character would hold the event loop for milliseconds.
        key = " ".join(query[:_MAX_QUERY_CHARS].lower().split())
        if not key:
            return Match(None, 0.0)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        scores = self.similarities(key)
        row = int(scores.argmax())
        similarity = min(1.0, max(0.0, float(scores[row])))
        match = Match(self.entries[self._rows[row]] if similarity > 0 else None, similarity)
        self._cache[key] = match
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return match


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
