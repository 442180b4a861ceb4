"""``POST /slack/events``: reviewers' clicks through slack-bolt, verdicts through one path.

Headers are checked before bolt sees the request (bolt answers 500 to a non-numeric
timestamp): a missing, malformed or stale (over 5 minutes) timestamp or signature is a
401, and so is a forged one; a signed body bolt or the listeners could not read is a
400 (``requests``: bolt parses before it verifies). A verdict is committed *before* the
ack; the card is redrawn by the outbox after it, and private answers ("already
decided", refusals) are sent after the ack, so nothing slow holds Slack's 3 seconds.
The same bolt app (``build_bolt_app``) takes Socket Mode's envelopes (``socket_mode``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.logger import messages as bolt_messages
from slack_sdk.web.async_client import AsyncWebClient
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from adapters.slack.card import (
    APPROVE,
    CORRECT,
    CORRECTION_BLOCK,
    CORRECTION_VIEW,
    REJECT,
    mention,
    parse_action,
    parse_correction,
)
from adapters.slack.channel import ReviewerCheck, SlackReviewChannel
from adapters.slack.requests import check_signature, read_payload
from middleware.errors import (
    InvalidVerdict,
    NotReviewable,
    ReviewChannelError,
    StoreUnavailable,
    UnknownReply,
)
from middleware.ports import PostedCard, ReviewDesk, ReviewOutcome
from middleware.vocabulary import Reason, Verdict

log = logging.getLogger("hitl.slack.events")

#: no card of a replayed reply is ever posted, but a signed payload may still name one
REPLAYED = "Reply {reply_id} was replayed from a recorded stream; it takes no review."

MAX_SKEW_S = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")

Ack = Callable[..., Awaitable[Any]]

NOT_A_REVIEWER = (
    "Only reviewers can decide on review cards. Ask whoever runs the gateway to add your "
    "Slack user id to [slack] reviewers (or to invite you to the review channel)."
)


def header_problem(timestamp: str | None, signature: str | None, now: float) -> str | None:
    """Why Slack's signature headers can't be right, or None (pure)."""
    if not timestamp or not signature:
        return "missing X-Slack-Request-Timestamp or X-Slack-Signature header"
    if not _TIMESTAMP.fullmatch(timestamp):
        return "X-Slack-Request-Timestamp must be a UNIX time in seconds"
    if abs(now - int(timestamp)) > MAX_SKEW_S:
        return "X-Slack-Request-Timestamp is more than 5 minutes away from now (replayed?)"
    if not _SIGNATURE.fullmatch(signature):
        return "X-Slack-Signature must look like v0=<64 hex digits>"
    return None


class _KnownBoltNotices(logging.Filter):
    """Drops bolt's start-up notices about token precedence: we pass a client and an
    ``authorize`` on purpose (no Slack round trip on the click path)."""

    expected = frozenset(
        {
            bolt_messages.warning_token_skipped(),
            bolt_messages.warning_client_prioritized_and_token_skipped(),
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.expected


def _bolt_logger() -> logging.Logger:
    logger = logging.getLogger("hitl.slack.bolt")
    if not any(isinstance(f, _KnownBoltNotices) for f in logger.filters):
        logger.addFilter(_KnownBoltNotices())
    return logger


class SlackEvents:
    """``ports.ChannelEvents`` for Slack: header checks, then the signature and the
    payload's shape (``requests``), then bolt. The gateway reads the body under its limit
    before ``handle``."""

    def __init__(self, *, handler: AsyncSlackRequestHandler, signing_secret: str) -> None:
        self.handler = handler
        self._secret = signing_secret

    def __repr__(self) -> str:
        return "SlackEvents(<signing secret>)"

    def refuse(self, headers: Headers, now: float) -> str | None:
        return header_problem(
            headers.get("x-slack-request-timestamp"), headers.get("x-slack-signature"), now
        )

    async def handle(self, request: Request) -> Response:
        """Bolt's answer, or ``InvalidSignature`` (401) / ``Refused`` (400) first."""
        body = await request.body()
        headers = request.headers
        check_signature(
            self._secret,
            headers.get("x-slack-request-timestamp", ""),
            headers.get("x-slack-signature", ""),
            body,
        )
        read_payload(body, headers.get("content-type"))
        return await self.handler.handle(request)


class _Decisions:
    """Bolt listeners: reviewer check, verdict committed, ack, then private answers."""

    def __init__(
        self, *, desk: ReviewDesk, channel: SlackReviewChannel, reviewers: ReviewerCheck
    ) -> None:
        self.desk = desk
        self.channel = channel
        self.reviewers = reviewers

    async def _tell(self, body: dict[str, Any], user: str, text: str) -> None:
        where = (body.get("channel") or {}).get("id") or self.channel.channel
        try:
            await self.channel.ephemeral(where, user, text)
        except ReviewChannelError as exc:
            log.warning("could not answer %s privately: %s", user, exc)

    async def _reviewer(self, user: str) -> bool | None:
        """True/False, or None when Slack can't say (the click is refused, nothing changes)."""
        try:
            return await self.reviewers.allows(user)
        except ReviewChannelError as exc:
            log.warning("could not check whether %s is a reviewer: %s", user, exc)
            return None

    async def _refuse(
        self, ack: Ack, body: dict[str, Any], user: str, allowed: bool | None
    ) -> None:
        await ack()
        if allowed is None:
            await self._tell(body, user, "Slack could not confirm you are a reviewer; try again.")
        else:
            log.info("refused a review click from %s: not a reviewer", user)
            await self._tell(body, user, NOT_A_REVIEWER)

    @staticmethod
    def _already(decided_by: str | None, state: str) -> str:
        return f"Already decided by {mention(decided_by)}: {state}."

    def _not_applied(self, outcome: ReviewOutcome) -> str:
        if outcome.decided_by is not None:
            return self._already(outcome.decided_by, outcome.state)
        return "You already voted on this reply; another reviewer's vote is needed."

    @staticmethod
    def _counted(outcome: ReviewOutcome) -> str:
        return (
            f"Your vote is in ({len(outcome.votes)} so far); {outcome.votes_required} "
            "agreeing reviewers decide this reply."
        )

    async def _admit(
        self, ack: Ack, body: dict[str, Any], action: dict[str, Any]
    ) -> tuple[str, str, str | None] | None:
        """(user, reply id, reason) of a click from a reviewer; else ack, say why, None."""
        user = str((body.get("user") or {}).get("id") or "")
        try:
            reply_id, reason = parse_action(action)
        except ValueError as exc:
            log.warning("ignored a review click: %s", exc)
            await ack()
            return None
        allowed = await self._reviewer(user)
        if not allowed:
            await self._refuse(ack, body, user, allowed)
            return None
        return user, reply_id, reason

    async def click(
        self, verdict: Verdict, ack: Ack, body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        admitted = await self._admit(ack, body, action)
        if admitted is None:
            return
        user, reply_id, reason = admitted
        if verdict == "reject":
            reason = reason or "other"
        try:
            # parse_action admits only known reasons.
            outcome = await self.desk.decide(reply_id, verdict, user, cast(Reason | None, reason))
        except UnknownReply:
            await ack()
            await self._tell(body, user, f"Reply {reply_id} is no longer in the store.")
            return
        except NotReviewable:
            await ack()
            await self._tell(body, user, REPLAYED.format(reply_id=reply_id))
            return
        except (StoreUnavailable, InvalidVerdict) as exc:
            log.error("review click on %s by %s not stored: %s", reply_id, user, exc)
            await ack()
            await self._tell(body, user, "Your decision could not be saved; please try again.")
            return
        # Committed: now Slack may hear that the click arrived.
        await ack()
        if not outcome.applied:
            await self._tell(body, user, self._not_applied(outcome))
        elif not outcome.decided:
            await self._tell(body, user, self._counted(outcome))

    async def approve(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        await self.click("approve", ack, body, action)

    async def reject(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        await self.click("reject", ack, body, action)

    async def correct(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        admitted = await self._admit(ack, body, action)
        if admitted is None:
            return
        user, reply_id, _ = admitted
        try:
            item = await self.desk.item_for(reply_id)
        except StoreUnavailable as exc:
            log.error("correction click on %s: %s", reply_id, exc)
            item = None
        await ack()
        if item is None:
            await self._tell(body, user, f"Reply {reply_id} could not be loaded; try again.")
            return
        if item.decided:
            await self._tell(body, user, self._already(item.decided_by, item.state))
            return
        channel = (body.get("channel") or {}).get("id")
        ts = (body.get("container") or {}).get("message_ts")
        card = PostedCard(str(channel), str(ts)) if channel and ts else None
        try:
            # The trigger id expires 3 s after the click: open the modal right away.
            await self.channel.open_correction(str(body.get("trigger_id") or ""), item, card)
        except ReviewChannelError as exc:
            log.warning("could not open the correction form for %s: %s", reply_id, exc)
            await self._tell(body, user, "Slack did not open the correction form; try again.")

    async def submit_correction(self, ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = str((body.get("user") or {}).get("id") or "")

        async def refuse(message: str) -> None:
            await ack(response_action="errors", errors={CORRECTION_BLOCK: message})

        try:
            reply_id, text = parse_correction(view)
        except ValueError as exc:
            log.warning("ignored a correction submission: %s", exc)
            await ack()
            return
        allowed = await self._reviewer(user)
        if not allowed:
            log.info("refused a correction from %s: not a reviewer", user)
            await refuse(
                "Only reviewers can correct answers."
                if allowed is False
                else "Slack could not confirm you are a reviewer; try again."
            )
            return
        if not text.strip():
            await refuse("Write the corrected answer.")
            return
        try:
            outcome = await self.desk.decide(reply_id, "correct", user, None, text)
        except InvalidVerdict as exc:
            await refuse(str(exc))
            return
        except UnknownReply:
            await refuse(f"Reply {reply_id} is no longer in the store.")
            return
        except NotReviewable:
            await refuse(REPLAYED.format(reply_id=reply_id))
            return
        except StoreUnavailable as exc:
            log.error("correction of %s by %s not stored: %s", reply_id, user, exc)
            await refuse("The correction could not be saved; please try again.")
            return
        if not outcome.applied:
            # Plain text: a form's error message shows no mentions.
            await refuse(
                f"Already decided by {outcome.decided_by}: {outcome.state}."
                if outcome.decided_by is not None
                else "You already voted on this reply; another reviewer's vote is needed."
            )
        else:
            await ack()
            if not outcome.decided:
                await self._tell(body, user, self._counted(outcome))


def build_bolt_app(
    *,
    client: AsyncWebClient,
    signing_secret: str | None,
    desk: ReviewDesk,
    channel: SlackReviewChannel,
    reviewers: ReviewerCheck,
) -> AsyncApp:
    """The bolt app and its listeners, for either transport: ``/slack/events`` (bolt
    checks the signature again) or Socket Mode (``signing_secret=None``: nothing is
    signed on a socket the gateway opened itself). Built by the composition root."""

    async def authorize(
        enterprise_id: str | None, team_id: str | None, user_id: str | None
    ) -> AuthorizeResult:
        # From the start-up auth.test: no Slack call between a click and its ack.
        identity = channel.identity
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id,
            bot_token=client.token,
            bot_user_id=identity.bot_user_id if identity else None,
            bot_id=identity.bot_id if identity else None,
            user_id=user_id,
        )

    bolt = AsyncApp(
        name="hitl-gateway",
        client=client,
        # Never None: bolt would read $SLACK_SIGNING_SECRET itself.
        signing_secret=signing_secret or "",
        authorize=authorize,
        request_verification_enabled=signing_secret is not None,
        logger=_bolt_logger(),
    )
    decisions = _Decisions(desk=desk, channel=channel, reviewers=reviewers)
    bolt.action(APPROVE)(decisions.approve)
    bolt.action(REJECT)(decisions.reject)
    bolt.action(CORRECT)(decisions.correct)
    bolt.view(CORRECTION_VIEW)(decisions.submit_correction)
    return bolt


def build_slack_events(
    *,
    client: AsyncWebClient,
    signing_secret: str,
    desk: ReviewDesk,
    channel: SlackReviewChannel,
    reviewers: ReviewerCheck,
) -> SlackEvents:
    """``POST /slack/events`` (HTTP mode): the bolt app behind the signature checks."""
    bolt = build_bolt_app(
        client=client,
        signing_secret=signing_secret,
        desk=desk,
        channel=channel,
        reviewers=reviewers,
    )
    return SlackEvents(handler=AsyncSlackRequestHandler(bolt), signing_secret=signing_secret)
