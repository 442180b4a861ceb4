"""The seams adapters fill, and the values that cross them. Adapters import only this
module, ``middleware.errors`` and ``middleware.vocabulary`` from the gateway.

- ``Upstream``: a chat model. It speaks the OpenAI Chat Completions wire format; the
  gateway hands it the client's body unchanged and gets back either a whole reply or a
  stream of raw SSE bytes, which it relays as they come.
- ``ReviewChannel``: where review cards go (Slack, or the log), drawn from a
  ``ReviewItem``.
- ``ReviewDesk``: what a reviewer channel calls back into when a person decides: the
  same path as the review API.
- ``ChannelEvents``: a channel's inbound HTTP requests (Slack's interactivity), behind
  the gateway's own body limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from middleware.vocabulary import DECIDED_STATES, Reason, Verdict

if TYPE_CHECKING:
    from starlette.datastructures import Headers
    from starlette.requests import Request
    from starlette.responses import Response


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


@dataclass(frozen=True, slots=True)
class ReviewVote:
    """One reviewer's vote on an item (several may be required to decide it)."""

    reviewer: str
    verdict: str
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """What a reviewer needs to judge one reply: the values a review card is drawn from."""

    reply_id: str
    question: str
    answer: str
    confidence: float
    #: replies are reviewed below this confidence
    threshold: float
    history: tuple[tuple[str, str], ...] = ()
    #: why it was flagged, most telling first
    reasons: tuple[str, ...] = ()
    trigger: str = "policy"
    model: str = ""
    hold: bool = False
    #: the end user's thumbs-down reason and comment, when there is one
    complaint: str | None = None
    created_at: float = 0.0
    state: str = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    correction: str | None = None
    #: the votes so far, and how many agreeing ones decide the item
    votes: tuple[ReviewVote, ...] = ()
    votes_required: int = 1

    @property
    def decided(self) -> bool:
        return self.state in DECIDED_STATES


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    """What became of one reviewer's decision."""

    reply_id: str
    #: this call's verdict was committed; False: ``decided_by`` was first
    applied: bool
    state: str
    decided_by: str | None
    decided_at: float | None
    reason: str | None
    correction: str | None
    label_id: int | None = None
    channel: str | None = None
    message_ts: str | None = None
    #: when the escalation was opened (time to decision = decided_at - created_at)
    created_at: float | None = None
    #: this vote decided the item (False: more agreeing votes are needed, or not applied)
    decided: bool = True
    votes: tuple[ReviewVote, ...] = ()
    votes_required: int = 1

    @property
    def message(self) -> str:
        if self.applied and self.decided:
            return f"{self.state} by {self.decided_by}"
        if self.applied:
            return f"vote recorded ({len(self.votes)} of {self.votes_required} needed)"
        if self.state in DECIDED_STATES:
            return f"already decided by {self.decided_by} ({self.state})"
        return "this reviewer already voted on it"


@dataclass(frozen=True, slots=True)
class PostedCard:
    """Where a card sits in the channel, so it can be redrawn in place."""

    channel: str
    ts: str


class ReviewChannel(Protocol):
    """Where review cards go (Slack, or the log)."""

    async def post(self, item: ReviewItem) -> PostedCard | None:
        """Post a card; None when the channel only logged it (it stays pending)."""
        ...

    async def update(self, card: PostedCard, item: ReviewItem) -> None: ...

    async def find(
        self, reply_ids: Collection[str], *, since: float
    ) -> dict[str, list[PostedCard]]:
        """The cards in the channel for these replies posted after ``since``, oldest first
        (a reply with none is left out): a post whose answer was lost may have landed."""
        ...

    async def delete(self, card: PostedCard) -> None:
        """Take a card out of the channel (a copy left by a lost answer); gone already: fine."""
        ...

    async def announce(self, text: str) -> None:
        """Say something to the reviewers (a drift in the model's error rate)."""
        ...


class ReviewDesk(Protocol):
    """What a channel's listeners call when a person decides (``flows.decision``)."""

    async def decide(
        self,
        reply_id: str,
        verdict: Verdict,
        reviewer: str,
        reason: Reason | None = None,
        correction: str | None = None,
    ) -> ReviewOutcome:
        """Commit a verdict (first one wins).

        Raises ``UnknownReply``, ``InvalidVerdict`` or ``StoreUnavailable``.
        """
        ...

    async def item_for(self, reply_id: str) -> ReviewItem | None:
        """The item a reviewer sees for a reply, or None when the reply is unknown."""
        ...


class ChannelEvents(Protocol):
    """A reviewer channel's inbound requests, after the gateway has read the body."""

    def refuse(self, headers: Headers, now: float) -> str | None:
        """Why the request is refused before it is read (401), or None."""
        ...

    async def handle(self, request: Request) -> Response: ...
