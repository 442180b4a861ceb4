"""The Slack reviewer channel: Web API calls over one client, errors mapped at the edge.

``SlackApiError`` and network failures become ``ReviewChannelRetryable`` (rate limits
with their Retry-After, 5xx, refused connections) or ``ReviewChannelPermanent`` (wrong
token, unknown channel, invalid blocks...: retrying cannot help). A call whose answer
was lost (a timeout, a connection dropped after sending, an error Slack says may follow
a partial success) is ``ReviewChannelAmbiguous``: the card may be in the channel, so the
outbox looks for it (``find``, by the metadata every card carries) before posting again.
The outbox owns retries, so the client's own retry handlers are off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack.card import correction_modal, escape, fallback_text, render_review_message
from middleware.errors import (
    ReviewChannelAmbiguous,
    ReviewChannelError,
    ReviewChannelPermanent,
    ReviewChannelRetryable,
)
from middleware.ports import PostedCard, ReviewItem

log = logging.getLogger("hitl.slack")

#: Slack error codes worth retrying; any other error code is permanent
RETRYABLE_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
#: Slack's words for these: "it's possible some aspect of the operation succeeded"
MAYBE_DONE_ERRORS = frozenset({"internal_error", "fatal_error"})
#: failures before the request left: nothing can have been posted
NEVER_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, ConnectionRefusedError)
#: every card's message metadata: ``{"event_type": CARD_EVENT, "event_payload": {"reply_id": ...}}``
CARD_EVENT = "hitl_review"


def _data(response: AsyncSlackResponse, method: str) -> dict[str, Any]:
    data = response.data
    if not isinstance(data, dict):
        raise ReviewChannelPermanent(f"Slack {method} answered something that is not JSON")
    return data


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def map_slack_error(exc: BaseException, method: str) -> ReviewChannelError:
    """Our error for a failed Slack call (pure: looks only at the exception)."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        data = getattr(response, "data", None)
        code = data.get("error") if isinstance(data, dict) else None
        what = f"Slack {method} failed: HTTP {status}" + (f", {code}" if code else "")
        if status == 429 or code in ("ratelimited", "rate_limited"):
            retry_after = _retry_after(getattr(response, "headers", None) or {})
            return ReviewChannelRetryable(what, retry_after=retry_after)
        if code in MAYBE_DONE_ERRORS or (status >= 500 and not code):
            return ReviewChannelAmbiguous(what + " (it may have taken effect)")
        if status >= 500 or code in RETRYABLE_ERRORS or (status != 200 and not code):
            return ReviewChannelRetryable(what)
        hint = {
            "invalid_auth": "check the bot token in [slack] bot_token_env",
            "not_authed": "check the bot token in [slack] bot_token_env",
            "token_revoked": "reinstall the Slack app and update the bot token",
            "account_inactive": "reinstall the Slack app and update the bot token",
            "channel_not_found": "check [slack] channel (a channel id such as C0123456789)",
            "not_in_channel": "invite the bot to the channel (/invite @hitl-review)",
            "missing_scope": "add the scopes in slack-app-manifest.yaml and reinstall",
            "invalid_blocks": "a card was refused: please report this with the log",
        }.get(code or "")
        return ReviewChannelPermanent(what + (f" ({hint})" if hint else ""))
    what = f"Slack {method} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, (*NEVER_SENT, SlackClientError)):
        return ReviewChannelRetryable(what)
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return ReviewChannelAmbiguous(what + " (the answer was lost; it may have taken effect)")
    return ReviewChannelPermanent(what)


def _error_code(exc: BaseException | None) -> str | None:
    data = getattr(getattr(exc, "response", None), "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    return str(code) if code else None


def card_reply_id(message: Mapping[str, Any], bot_id: str | None = None) -> str | None:
    """The reply a message of ``conversations.history`` is the review card of, from its
    metadata, or None (pure). ``bot_id``: only cards this bot posted."""
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != CARD_EVENT:
        return None
    if message.get("subtype") == "tombstone" or (bot_id and message.get("bot_id") != bot_id):
        return None
    payload = metadata.get("event_payload")
    reply_id = payload.get("reply_id") if isinstance(payload, dict) else None
    return str(reply_id) if reply_id else None


def ts_key(ts: str) -> tuple[int, int]:
    """A Slack ts ("1700000000.000123") as a sortable pair, without float rounding."""
    seconds, _, fraction = ts.partition(".")
    return int(seconds or 0), int((fraction + "000000")[:6])


@dataclass(frozen=True, slots=True)
class SlackIdentity:
    team: str
    team_id: str
    bot_user_id: str | None
    bot_id: str | None
    user: str


class SlackReviewChannel:
    """Posts and redraws review cards, answers privately, opens the correction modal."""

    def __init__(
        self,
        *,
        client: AsyncWebClient,
        channel: str,
        redact: Callable[[str], str] = lambda text: text,
        timeout_s: float = 10.0,
        history_pages: int = 10,
        history_page_size: int = 200,
    ) -> None:
        self.client = client
        self.channel = channel
        self.redact = redact
        self.timeout_s = timeout_s
        #: a lookup reads at most this many pages of the channel's history
        self.history_pages = history_pages
        self.history_page_size = history_page_size
        self.identity: SlackIdentity | None = None
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """One pooled HTTP session for the app's lifetime (bolt's per-request clients share it)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
            self.client.session = self._session

    async def aclose(self) -> None:
        if self._session is not None:
            self.client.session = None
            await self._session.close()
            self._session = None

    async def _call(self, method: str, call: Any) -> AsyncSlackResponse:
        try:
            async with asyncio.timeout(self.timeout_s):
                response: AsyncSlackResponse = await call
                return response
        except (SlackApiError, SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise map_slack_error(exc, method) from exc

    async def check(self) -> SlackIdentity:
        """``auth.test``: who the token is; raises a channel error when it is refused."""
        data = _data(await self._call("auth.test", self.client.auth_test()), "auth.test")
        self.identity = SlackIdentity(
            team=str(data.get("team", "")),
            team_id=str(data.get("team_id", "")),
            bot_user_id=data.get("user_id"),
            bot_id=data.get("bot_id"),
            user=str(data.get("user", "")),
        )
        return self.identity

    async def post(self, item: ReviewItem) -> PostedCard:
        response = await self._call(
            "chat.postMessage",
            self.client.chat_postMessage(
                channel=self.channel,
                text=fallback_text(item, redact=self.redact),
                blocks=render_review_message(item, redact=self.redact),
                unfurl_links=False,
                unfurl_media=False,
                metadata={"event_type": CARD_EVENT, "event_payload": {"reply_id": item.reply_id}},
            ),
        )
        data = _data(response, "chat.postMessage")
        if not data.get("ts"):
            raise ReviewChannelPermanent("Slack chat.postMessage answered without a message ts")
        return PostedCard(str(data.get("channel") or self.channel), str(data["ts"]))

    async def announce(self, text: str) -> None:
        await self._call(
            "chat.postMessage",
            self.client.chat_postMessage(
                channel=self.channel, text=escape(text), unfurl_links=False, unfurl_media=False
            ),
        )

    async def update(self, card: PostedCard, item: ReviewItem) -> None:
        await self._call(
            "chat.update",
            self.client.chat_update(
                channel=card.channel,
                ts=card.ts,
                text=fallback_text(item, redact=self.redact),
                blocks=render_review_message(item, redact=self.redact),
            ),
        )

    async def find(
        self, reply_ids: Collection[str], *, since: float
    ) -> dict[str, list[PostedCard]]:
        """The cards for ``reply_ids`` posted after ``since``, oldest first: the channel's
        history read newest first with every message's metadata, at most
        ``history_pages`` pages (a warning says when that was not back far enough)."""
        wanted = frozenset(reply_ids)
        bot_id = self.identity.bot_id if self.identity else None
        found: dict[str, list[PostedCard]] = {}
        cursor: str | None = None
        for _ in range(self.history_pages):
            response = await self._call(
                "conversations.history",
                self.client.conversations_history(
                    channel=self.channel,
                    oldest=f"{max(since, 0.0):.6f}",
                    limit=self.history_page_size,
                    cursor=cursor,
                    include_all_metadata=True,
                ),
            )
            data = _data(response, "conversations.history")
            for message in data.get("messages") or ():
                reply_id = card_reply_id(message, bot_id) if isinstance(message, dict) else None
                if reply_id is not None and reply_id in wanted and message.get("ts"):
                    card = PostedCard(self.channel, str(message["ts"]))
                    found.setdefault(reply_id, []).append(card)
            more = data.get("has_more")
            cursor = (data.get("response_metadata") or {}).get("next_cursor") if more else None
            if not cursor:
                break
        else:
            log.warning(
                "looked for review cards through %d pages of the channel's history without "
                "reaching %.0f; a card posted before the last page read would be missed",
                self.history_pages,
                since,
            )
        return {rid: sorted(cards, key=lambda c: ts_key(c.ts)) for rid, cards in found.items()}

    async def delete(self, card: PostedCard) -> None:
        try:
            await self._call(
                "chat.delete", self.client.chat_delete(channel=card.channel, ts=card.ts)
            )
        except ReviewChannelPermanent as exc:
            if _error_code(exc.__cause__) != "message_not_found":
                raise

    async def ephemeral(self, channel: str, user: str, text: str) -> None:
        """A message only ``user`` sees (refusals, "already decided")."""
        await self._call(
            "chat.postEphemeral",
            self.client.chat_postEphemeral(channel=channel, user=user, text=text),
        )

    async def open_correction(
        self, trigger_id: str, item: ReviewItem, card: PostedCard | None = None
    ) -> None:
        view = correction_modal(
            item,
            redact=self.redact,
            channel=card.channel if card else None,
            ts=card.ts if card else None,
        )
        await self._call("views.open", self.client.views_open(trigger_id=trigger_id, view=view))

    async def members(self, channel: str) -> frozenset[str]:
        """Every member of ``channel`` (all pages)."""
        found: set[str] = set()
        cursor: str | None = None
        for _ in range(100):
            response = await self._call(
                "conversations.members",
                self.client.conversations_members(channel=channel, cursor=cursor, limit=1000),
            )
            data = _data(response, "conversations.members")
            found.update(str(m) for m in data.get("members") or ())
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
        return frozenset(found)


class ReviewerCheck:
    """Who may decide: the configured user ids, else the members of the review channel.

    Membership is cached for ``ttl_s`` and refetched at most once per ``refresh_s`` when
    an unknown user clicks (someone just joined), so clicks stay within Slack's 3 s.
    """

    def __init__(
        self,
        *,
        reviewers: Iterable[str],
        channel: SlackReviewChannel,
        ttl_s: float = 300.0,
        refresh_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reviewers = frozenset(reviewers)
        self.channel = channel
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._members: frozenset[str] | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def allows(self, user: str) -> bool:
        """Raises ``ReviewChannelError`` when membership cannot be read (fail closed)."""
        if self.reviewers:
            return user in self.reviewers
        if self._needs_fetch(user):
            async with self._lock:
                if self._needs_fetch(user):
                    self._members = await self.channel.members(self.channel.channel)
                    self._fetched_at = self.clock()
        return self._members is not None and user in self._members

    def _needs_fetch(self, user: str) -> bool:
        age = self.clock() - self._fetched_at
        if self._members is None or age > self.ttl_s:
            return True
        return user not in self._members and age > self.refresh_s
