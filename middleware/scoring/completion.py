"""Reading an OpenAI chat exchange: pure functions over the request and reply JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def content_text(content: Any) -> str:
    """Message content as text: a string, None, a content part, or an array of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, list | tuple):
        return "\n".join(t for t in (content_text(part) for part in content) if t)
    return ""


@dataclass(frozen=True, slots=True)
class Conversation:
    question: str
    history: tuple[tuple[str, str], ...]


def read_conversation(messages: list[Any], *, history_turns: int = 4) -> Conversation:
    """The last user turn and up to ``history_turns`` turns before it."""
    turns: list[tuple[str, str]] = []
    for message in messages:
        if isinstance(message, dict):
            role = str(message.get("role", ""))
            role = "bot" if role == "assistant" else role
            if role in ("user", "bot"):
                turns.append((role, content_text(message.get("content"))))
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last_user is None:
        return Conversation("", tuple(turns[-history_turns:]))
    return Conversation(
        turns[last_user][1], tuple(turns[max(0, last_user - history_turns) : last_user])
    )


@dataclass(slots=True)
class ReplySummary:
    text: str = ""
    finish_reason: str | None = None
    tool_calls: int = 0
    logprob_sum: float = 0.0
    logprob_count: int = 0

    @property
    def logprob_mean(self) -> float | None:
        return self.logprob_sum / self.logprob_count if self.logprob_count else None

    def add_logprobs(self, logprobs: Any) -> None:
        if not isinstance(logprobs, dict):
            return
        for token in logprobs.get("content") or ():
            value = token.get("logprob") if isinstance(token, dict) else None
            if isinstance(value, int | float) and math.isfinite(value):
                self.logprob_sum += float(value)
                self.logprob_count += 1


def read_completion(completion: Any) -> ReplySummary:
    """The first choice of a ``chat.completion``: the one the user reads."""
    summary = ReplySummary()
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return summary
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    summary.text = content_text(message.get("content"))
    summary.finish_reason = choice.get("finish_reason")
    tool_calls = message.get("tool_calls")
    summary.tool_calls = len(tool_calls) if isinstance(tool_calls, list) else 0
    summary.add_logprobs(choice.get("logprobs"))
    return summary


@dataclass(slots=True)
class StreamSummary:
    """Folds ``chat.completion.chunk`` objects as they pass through."""

    id: str | None = None
    created: int | None = None
    model: str | None = None
    reply: ReplySummary = field(default_factory=ReplySummary)
    #: chunk objects folded: none means the upstream's "stream" held no reply at all
    chunks: int = 0
    _parts: list[str] = field(default_factory=list)
    _tool_ids: set[int] = field(default_factory=set)

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        self.chunks += 1
        if self.id is None and isinstance(chunk.get("id"), str):
            self.id = chunk["id"]
        if self.created is None and isinstance(chunk.get("created"), int):
            self.created = chunk["created"]
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    self._parts.append(content)
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        self._tool_ids.add(int(call.get("index", 0)))
            if choice.get("finish_reason"):
                self.reply.finish_reason = choice["finish_reason"]
            self.reply.add_logprobs(choice.get("logprobs"))

    def finish(self) -> ReplySummary:
        self.reply.text = "".join(self._parts)
        self.reply.tool_calls = len(self._tool_ids)
        return self.reply


def split_events(buffer: bytearray) -> list[bytes]:
    """Take every complete SSE event (ending in a blank line) off the front of ``buffer``.

    One pass and one cut, however many events the buffer holds: an upstream often
    sends a whole short reply in one read."""
    events: list[bytes] = []
    start = 0
    crlf_ends = b"\r\n\r\n" in buffer
    while True:
        end, size = buffer.find(b"\n\n", start), 2
        if crlf_ends:
            crlf = buffer.find(b"\r\n\r\n", start)
            if crlf != -1 and (end == -1 or crlf < end):
                end, size = crlf, 4
        if end == -1:
            break
        events.append(bytes(buffer[start : end + size]))
        start = end + size
    if start:
        del buffer[:start]
    return events


def event_data(event: bytes) -> bytes | None:
    """The ``data:`` payload of one SSE event (lines joined), or None if it has none."""
    if event.startswith(b"data:") and event.find(b"\n") == len(event) - 2 and b"\r" not in event:
        return event[5:-2].lstrip(b" ")  # one data line: what nearly every chunk is
    lines = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in event.splitlines()
    ]
    data = [line for line in lines if line is not None]
    return b"\n".join(data) if data else None
