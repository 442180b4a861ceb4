"""Building the review side (part of the composition root, like ``app.build_app``).

``build_review(...)`` makes the verdict path, the outbox and its channel (Slack when
``[slack] enabled``, else the log), the review API and ``/slack/events``, and returns
them as ``ReviewParts`` for ``build_app`` to wire: routes, the start/stop coroutines
for the lifespan, the outbox's wake-up for the recorder, the downvote hook for the
feedback endpoint, and the figures ``/healthz`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute, Route

from feedback_store import Store, StoreError
from middleware.errors import ConfigError, ReviewChannelPermanent, ReviewChannelRetryable
from middleware.http.reviews import ReviewAPI
from middleware.review.outbox import LogChannel, Outbox, RetryPolicy
from middleware.review.privacy import Redactor
from middleware.review.service import ReviewService
from middleware.scoring.policy import ReviewBudget
from middleware.scoring.tokens import TokenSigner
from middleware.settings import Secrets, Settings

log = logging.getLogger("hitl.review")


@dataclass
class ReviewParts:
    service: ReviewService
    outbox: Outbox
    routes: list[BaseRoute]
    #: after an exchange with an escalation is committed (``Recorder(on_escalation=...)``)
    on_escalation: Callable[[], None]
    #: ``FeedbackEndpoint(on_downvote=...)``: a thumbs-down with a comment opens a review
    on_downvote: Callable[[str, str | None], Awaitable[None]]
    slack_enabled: bool
    _start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        for step in self._start:
            await step()

    async def stop(self) -> None:
        for step in reversed(self._stop):
            await step()

    async def health(self) -> dict[str, Any]:
        """Dead letters and the backlog, for ``/healthz``."""
        try:
            counts = await self.service.store.review_counts()
        except StoreError:
            return {"failed": None, "pending": None}
        return {"failed": counts.get("failed", 0), "pending": counts.get("pending", 0)}


def build_review(
    settings: Settings,
    secrets: Secrets,
    store: Store,
    *,
    signer: TokenSigner,
    budget: ReviewBudget,
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> ReviewParts:
    slack = settings.slack
    service = ReviewService(
        store=store,
        reviewer_weight=settings.learner.reviewer_weight,
        threshold=settings.policy.escalate_below,
        clock=clock,
    )
    api = ReviewAPI(
        store=store,
        signer=signer,
        review=service,
        admin_token=secrets.admin_token,
        admin_token_env=settings.report.admin_token_env,
    )
    routes: list[BaseRoute] = [
        Route("/v1/replies/{reply_id}", api.get_reply, methods=["GET"]),
        Route("/v1/reviews/{reply_id}", api.post_review, methods=["POST"]),
    ]
    retry = retry or RetryPolicy(base_s=slack.retry_base_s, cap_s=slack.retry_max_s)
    start: list[Callable[[], Awaitable[None]]] = []
    stop: list[Callable[[], Awaitable[None]]] = []
    outbox = Outbox(
        store=store,
        channel=LogChannel(),
        load_item=service.item,
        policy=retry,
        clock=clock,
        rng=rng,
    )
    service.on_decided = outbox.wake
    if slack.enabled and not slack.channel:
        raise ConfigError(
            "slack.channel is empty: set it to the review channel's id (e.g. C0123456789) "
            "or set slack.enabled = false"
        )
    slack_on = slack.enabled and _slack_secrets_ok(settings, secrets)
    if slack_on:
        # Only here, and only when Slack is on, does the gateway import slack-bolt.
        from slack_sdk.web.async_client import AsyncWebClient

        from adapters.slack.channel import ReviewerCheck, SlackReviewChannel
        from adapters.slack.events import build_slack_events

        client = AsyncWebClient(
            token=secrets.slack_bot_token, base_url=slack.api_url, retry_handlers=[]
        )
        redact = Redactor(settings.privacy.redact)
        slack_channel = SlackReviewChannel(client=client, channel=slack.channel, redact=redact)
        outbox.channel = slack_channel
        events = build_slack_events(
            client=client,
            signing_secret=secrets.slack_signing_secret or "",
            review=service,
            channel=slack_channel,
            reviewers=ReviewerCheck(reviewers=slack.reviewers, channel=slack_channel),
        )
        routes.append(Route("/slack/events", events.endpoint, methods=["POST"]))

        async def begin() -> None:
            """Check the token once (auth.test); post cards unless Slack refused it."""
            try:
                identity = await slack_channel.check()
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

        tasks: list[asyncio.Task[None]] = []

        async def open_slack() -> None:
            await slack_channel.open()
            # In the background: a slow Slack must not hold up start-up.
            tasks.append(asyncio.create_task(begin(), name="hitl-slack-start"))

        async def close_slack() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await outbox.stop()
            await slack_channel.aclose()

        start.append(open_slack)
        stop.append(close_slack)
    else:

        async def start_outbox() -> None:
            outbox.start()

        start.append(start_outbox)
        stop.append(outbox.stop)

    async def on_downvote(reply_id: str, comment: str | None) -> None:
        if not settings.policy.review_downvotes:
            return
        try:
            exchange = await store.get_exchange(reply_id)
            if exchange is None:
                return
            confidence = float(exchange["confidence"])
            now = clock()
            # A complaint ranks with the least confident replies: only the share of
            # traffic and the hourly cap limit it. A reply already under review just
            # gets its card redrawn with the complaint.
            reviewed = await store.escalation_for(reply_id) is not None
            if not reviewed and not budget.allows(min(confidence, budget.threshold()), now):
                log.info("thumbs-down on %s not reviewed: the review budget is used up", reply_id)
                return
            opened = await store.open_review(reply_id, trigger="downvote", now=now)
            if opened is not None:
                budget.record(confidence, True, now)
            outbox.wake()
        except StoreError as exc:
            # The vote itself is stored; only the extra review card is lost.
            log.error("thumbs-down on %s: review card not queued (%s)", reply_id, exc)

    return ReviewParts(
        service=service,
        outbox=outbox,
        routes=routes,
        on_escalation=outbox.wake,
        on_downvote=on_downvote,
        slack_enabled=slack_on,
        _start=start,
        _stop=stop,
    )


def _slack_secrets_ok(settings: Settings, secrets: Secrets) -> bool:
    missing = [
        f"${name}"
        for name, value in (
            (settings.slack.bot_token_env, secrets.slack_bot_token),
            (settings.slack.signing_secret_env, secrets.slack_signing_secret),
        )
        if not value
    ]
    if missing:
        log.error(
            "[slack] enabled = true but %s %s empty: review cards go to the log and "
            "/slack/events is off until %s set",
            " and ".join(missing),
            "is" if len(missing) == 1 else "are",
            "it is" if len(missing) == 1 else "they are",
        )
        return False
    return True
