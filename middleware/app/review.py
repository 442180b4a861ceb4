"""The reviewer channel, part of the composition root: Slack when ``[slack] enabled``
and its secrets are set, else the log (the review API still takes decisions). Slack's
clicks arrive at ``/slack/events`` (``[slack] mode = "http"``) or over a Socket Mode
connection the gateway opens itself (``"socket"``, no public URL needed).

Only here, and only when Slack is on, does the gateway import slack-bolt.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from feedback_store import StoreError
from middleware.errors import ConfigError, ReviewChannelPermanent, ReviewChannelRetryable
from middleware.ports import ChannelEvents, ReviewChannel, ReviewDesk
from middleware.review.outbox import LogChannel, Outbox
from middleware.review.privacy import Redactor
from middleware.secrets import Secrets
from middleware.settings import Settings
from middleware.tasks import cancelled

if TYPE_CHECKING:
    from adapters.slack.channel import ReviewerCheck, SlackReviewChannel
    from adapters.slack.socket_mode import SlackSocket

log = logging.getLogger("hitl.review")


@dataclass(frozen=True)
class ReviewSide:
    channel: ReviewChannel
    settings: Settings
    #: Slack's channel and reviewer check (None: cards go to the log)
    slack: SlackReviewChannel | None = None
    reviewers: ReviewerCheck | None = None
    signing_secret: str = field(default="", repr=False)
    app_token: str = field(default="", repr=False)
    #: ``/slack/events`` (HTTP mode), once a desk takes the decisions
    events: ChannelEvents | None = None
    #: the Socket Mode connection (socket mode), once a desk takes the decisions
    socket: SlackSocket | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def with_desk(self, desk: ReviewDesk) -> ReviewSide:
        """The same side, with the events endpoint (or the socket) that sends decisions
        to ``desk``."""
        if self.slack is None or self.reviewers is None:
            return self
        if self.settings.slack.mode == "socket":
            from adapters.slack.events import build_bolt_app
            from adapters.slack.socket_mode import SlackSocket

            bolt = build_bolt_app(
                client=self.slack.client,
                signing_secret=None,
                desk=desk,
                channel=self.slack,
                reviewers=self.reviewers,
            )
            slack = self.settings.slack
            socket = SlackSocket(
                app=bolt,
                app_token=self.app_token,
                token_env=slack.app_token_env,
                retry_base_s=slack.retry_base_s,
                retry_max_s=slack.retry_max_s,
            )
            return replace(self, socket=socket)
        from adapters.slack.events import build_slack_events

        events = build_slack_events(
            client=self.slack.client,
            signing_secret=self.signing_secret,
            desk=desk,
            channel=self.slack,
            reviewers=self.reviewers,
        )
        return replace(self, events=events)

    async def start(self, outbox: Outbox) -> None:
        if self.slack is None:
            outbox.start()
            return
        await self.slack.open()
        if self.socket is not None:
            await self.socket.start()  # connects in the background
        # In the background: a slow Slack must not hold up start-up.
        self._tasks.append(asyncio.create_task(self._begin(outbox), name="hitl-slack-start"))

    async def stop(self, outbox: Outbox) -> None:
        if self.socket is not None:
            await self.socket.stop()
        for task in self._tasks:
            await cancelled(task)
        await outbox.stop()
        if self.slack is not None:
            await self.slack.aclose()

    async def _begin(self, outbox: Outbox) -> None:
        """Check the token once (auth.test); post cards unless Slack refused it."""
        channel, slack = self.slack, self.settings.slack
        if channel is None:
            return
        try:
            identity = await channel.check()
        except ReviewChannelPermanent as exc:
            log.error(
                "Slack refused the bot token in $%s (%s). Chat keeps working; review "
                "cards wait (pending) until the token is fixed and the gateway restarted.",
                slack.bot_token_env,
                exc,
            )
            return
        except ReviewChannelRetryable as exc:
            log.warning(
                "could not reach Slack to check the bot token (%s); review cards will "
                "be posted once it answers",
                exc,
            )
        else:
            log.info(
                "Slack: review cards go to channel %s, posted by %s in %s",
                slack.channel,
                identity.user,
                identity.team,
            )
        try:
            # Rows that waited while only the log listened now go to Slack.
            unparked = await outbox.unpark()
            if unparked:
                log.info("%d escalations waiting from before Slack was on", unparked)
        except StoreError as exc:
            log.error("could not requeue escalations that waited for Slack: %s", exc)
        outbox.start()


def build_channel(
    settings: Settings, secrets: Secrets, *, redact: Redactor | None = None
) -> ReviewSide:
    slack = settings.slack
    if slack.enabled and not slack.channel:
        raise ConfigError(
            "slack.channel is empty: set it to the review channel's id (e.g. C0123456789) "
            "or set slack.enabled = false"
        )
    if not (slack.enabled and _slack_secrets_ok(settings, secrets)):
        return ReviewSide(channel=LogChannel(), settings=settings)
    from slack_sdk.web.async_client import AsyncWebClient

    from adapters.slack.channel import ReviewerCheck, SlackReviewChannel

    client = AsyncWebClient(
        token=secrets.slack_bot_token, base_url=slack.api_url, retry_handlers=[]
    )
    channel = SlackReviewChannel(
        client=client,
        channel=slack.channel,
        redact=redact or Redactor(settings.privacy.redact),
    )
    return ReviewSide(
        channel=channel,
        settings=settings,
        slack=channel,
        reviewers=ReviewerCheck(reviewers=slack.reviewers, channel=channel),
        signing_secret=secrets.slack_signing_secret or "",
        app_token=secrets.slack_app_token or "",
    )


#: what a wrong kind of token in the app token's variable is (its prefix, never the token)
_OTHER_TOKENS = {"xoxb-": "a bot token", "xoxp-": "a user token", "xoxe": "a refresh token"}


def _slack_secrets_ok(settings: Settings, secrets: Secrets) -> bool:
    slack = settings.slack
    socket = slack.mode == "socket"
    app_token = secrets.slack_app_token
    if socket and app_token and not app_token.startswith("xapp-"):
        kind = next((k for p, k in _OTHER_TOKENS.items() if app_token.startswith(p)), None)
        raise ConfigError(
            f'[slack] mode = "socket" needs an app-level token (xapp-...) in '
            f"${slack.app_token_env}, but it holds {kind or 'something else'}: make one "
            "under the Slack app's Basic Information -> App-Level Tokens, with the "
            "connections:write scope"
        )
    second = (
        (slack.app_token_env, app_token)
        if socket
        else (slack.signing_secret_env, secrets.slack_signing_secret)
    )
    missing = [
        f"${name}"
        for name, value in ((slack.bot_token_env, secrets.slack_bot_token), second)
        if not value
    ]
    if missing:
        log.error(
            "[slack] enabled = true but %s %s empty: review cards go to the log and %s "
            "until %s set",
            " and ".join(missing),
            "is" if len(missing) == 1 else "are",
            "no Socket Mode connection is made" if socket else "/slack/events is off",
            "it is" if len(missing) == 1 else "they are",
        )
        return False
    return True
