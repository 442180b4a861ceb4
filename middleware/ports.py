"""What the gateway needs from a chat model: the seam every upstream adapter fills.

An adapter speaks the OpenAI Chat Completions wire format. The gateway hands it the
client's body unchanged and gets back either a whole reply or a stream of raw SSE
bytes, which it relays as they come.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    path: str  # below /v1, e.g. "/chat/completions" or "/models"
    query: str
    headers: list[tuple[str, str]]  # already filtered by forward_headers()
    body: bytes
    #: the parsed body for /chat/completions (None for other routes)
    payload: dict[str, object] | None = None


@dataclass(slots=True)
class UpstreamReply:
    """A whole upstream answer (non-streaming, or a streaming request that failed)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: extra signals the adapter knows about this reply (e.g. local retrieval similarity)
    signals: dict[str, float] = field(default_factory=dict)


class UpstreamStream(Protocol):
    """An open streamed answer. ``chunks()`` yields raw bytes as the upstream sends them.

    ``chunks()`` raises ``UpstreamError`` if the stream breaks midway. ``aclose()`` is
    always called by the gateway, after the last byte or on failure.
    """

    status: int
    headers: list[tuple[str, str]]
    signals: dict[str, float]

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Upstream(Protocol):
    name: str

    async def start(self) -> None:
        """Open pooled resources. Called once in the lifespan; must not need the network."""

    async def aclose(self) -> None: ...

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        """Send a request and read the whole answer. Raises UpstreamError subclasses."""
        ...

    async def open_stream(self, request: UpstreamRequest) -> UpstreamStream | UpstreamReply:
        """Send a streaming request. A non-2xx answer comes back read whole, as a reply."""
        ...
