"""The composition root: every part built from the settings, and every "after X, do Y"
wired here, in one visible place.

``build_parts(settings)`` returns ``Parts``, which ``hitl serve``, ``hitl replay`` and
the tests use. Each part gets what it calls as a constructor argument, in dependency order.
Building opens nothing: long-lived resources (engine, HTTP pool, background tasks)
open in ``Parts.start`` and close in ``Parts.stop``, which the app's lifespan calls.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from feedback_store import SchemaError, Store, StoreError
from feedback_store.leadership import leadership_for
from feedback_store.urls import is_sqlite, redact_url
from middleware.app.deep import DeepFlow, build_deep
from middleware.app.review import ReviewSide, build_channel
from middleware.app.startup import resume_budget, startup_line
from middleware.errors import ConfigError, SchemaOutdated, StoreUnavailable
from middleware.flows import ComplaintFlow, DecisionFlow, Hooks, ReplyFlow, VoteFlow
from middleware.flows.hold import Holds
from middleware.flows.retention import Retention
from middleware.http.draining import Draining
from middleware.http.ratelimit import RateLimit, per_minute
from middleware.learning.brain import Brain
from middleware.learning.learner import Learner
from middleware.learning.versions import built_with
from middleware.metrics import Metrics
from middleware.ports import ReviewOutcome, Upstream
from middleware.quotas import FleetCaps, Guarded, MemoryQuotas, Quotas, StoreQuotas
from middleware.review.items import ReviewItems
from middleware.review.outbox import Outbox
from middleware.review.privacy import Redactor
from middleware.review.retry import RetryPolicy
from middleware.scoring.policy import AskLimiter, ReviewBudget, Thresholds
from middleware.scoring.scorer import Scorer
from middleware.scoring.tokens import TokenSigner, new_secret
from middleware.secrets import Secrets
from middleware.settings import Settings

log = logging.getLogger("hitl")

#: what a process does: everything (one process, or any process of a fleet that may
#: lead its learning), serving only (a fleet's workers), or learning only (``hitl learner``)
Role = Literal["all", "serve", "learn"]


@dataclass(frozen=True)
class Parts:
    """Everything the gateway runs, built once from the settings."""

    settings: Settings
    role: Role
    secrets: Secrets
    store: Store
    upstream: Upstream
    signer: TokenSigner
    brain: Brain
    learner: Learner
    scorer: Scorer
    metrics: Metrics
    items: ReviewItems
    outbox: Outbox
    #: the reviewer channel and its events endpoint (Slack), or the log
    review: ReviewSide
    hooks: Hooks
    replies: ReplyFlow
    votes: VoteFlow
    decisions: DecisionFlow
    complaints: ComplaintFlow
    #: clients waiting for a reviewer on a held reply
    holds: Holds
    #: votes per client address per minute, counted in ``quotas``
    feedback_limit: RateLimit
    #: the counters a fleet shares: the hourly review cap, asks per user, votes per client
    quotas: Quotas
    #: streams' grace period at shutdown
    draining: Draining
    #: purges text older than ``[privacy] retain_days``, hourly
    retention: Retention
    deep: DeepFlow | None = None  # the deeper look ([scoring] deep), None when off

    async def start(self, *, serve: bool = True) -> None:
        """Open the store, learn what it holds, then (``serve``) open the rest."""
        try:
            await self.store.start()
        except SchemaError as exc:
            raise SchemaOutdated(str(exc)) from exc
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from exc
        await self._token_secret()
        # Learn every label the store holds (or adopt the fleet learner's newest
        # snapshot) before the port opens.
        replayed = await self.learner.begin()
        if replayed:
            log.info("learned %d labels committed since the last model snapshot", replayed)
        if not serve:
            return
        self.learner.start()
        if self.role != "serve":
            self.retention.start()
        if self.role == "learn":
            return
        await resume_budget(self.store, self.scorer.budget)
        self.draining.start()
        await self.upstream.start()
        await self.review.start(self.outbox)
        if self.deep is not None:
            await self.deep.start()
        log.info("%s", startup_line(self))
        # Everything built so far lives as long as the app: keep the cyclic garbage
        # collector from walking it again on every full collection (latency spikes).
        gc.collect()
        gc.freeze()

    async def stop(self, *, serve: bool = True) -> None:
        try:
            if serve:
                if self.role != "learn":
                    await self.draining.stop()
                    await self.review.stop(self.outbox)
                    await self.upstream.aclose()
                if self.deep is not None:
                    await self.deep.stop()
                await self.retention.stop()
                await self.learner.close()
        finally:
            await self.quotas.aclose()
            await self.store.close()

    async def _token_secret(self) -> None:
        settings = self.settings
        secret = self.secrets.token_secret or await self.store.get_or_create_value(
            "feedback_token_secret", new_secret
        )
        try:
            self.signer.set_secret(secret)
        except ValueError as exc:
            raise ConfigError(
                f"${settings.server.token_secret_env}: {exc} (or unset it to let the "
                "gateway generate and keep one)"
            ) from None


def build_upstream(settings: Settings) -> Upstream:
    if settings.upstream.kind == "local":
        from adapters.upstream.local import LocalUpstream

        return LocalUpstream()
    from adapters.upstream.openai import OpenAIUpstream

    return OpenAIUpstream(
        base_url=settings.upstream.base_url,
        timeout_s=settings.upstream.timeout_s,
        connect_timeout_s=settings.upstream.connect_timeout_s,
        max_connections=settings.upstream.max_connections,
    )


def build_quotas(settings: Settings, store: Store) -> Quotas:
    """Where the fleet's shared counts live: Redis when ``[store] redis_url`` is set, else
    the PostgreSQL store, else (SQLite: one process) this process's memory."""
    if settings.store.redis_url:
        from middleware.quotas.redis import RedisQuotas

        redis = RedisQuotas(settings.store.redis_url)
        return Guarded(redis, where=redis.where)
    if not is_sqlite(store.url):
        return Guarded(StoreQuotas(store), where=f"the store at {redact_url(store.url)}")
    return MemoryQuotas()


def _check_secrets(settings: Settings, secrets: Secrets) -> None:
    if secrets.token_secret is not None and len(secrets.token_secret) < 16:
        raise ConfigError(
            f"${settings.server.token_secret_env} is too short: the feedback token secret "
            "needs at least 16 characters (or unset it to let the gateway generate one)"
        )
    if settings.upstream.kind == "openai" and not secrets.upstream_api_key:
        log.warning(
            "no upstream API key: $%s is empty; requests go upstream without one",
            settings.upstream.api_key_env,
        )


def build_parts(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    upstream: Upstream | None = None,
    store: Store | None = None,
    retry: RetryPolicy | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
    role: Role = "all",
    quotas: Quotas | None = None,
) -> Parts:
    """Build every part; tests hand in a real local upstream or store, a seeded rng, the
    shared counters (``quotas``)."""
    environ = os.environ if environ is None else environ
    secrets = Secrets(settings, environ)
    _check_secrets(settings, secrets)
    policy, learning, slack = settings.policy, settings.learner, settings.slack

    store = store or Store(
        settings.store.url,
        commit_batch=settings.store.commit_batch,
        sync="normal" if settings.store.lose_recent_on_power_loss else "full",
        config_hint=settings.source if settings.source != "built-in defaults" else "config.toml",
    )
    upstream = upstream or build_upstream(settings)
    quotas = build_quotas(settings, store) if quotas is None else quotas
    caps = FleetCaps(
        quotas,
        reviews_per_hour=policy.max_reviews_per_hour,
        asks_per_user_per_hour=policy.ask_per_user_per_hour,
    )
    signer = TokenSigner()
    brain = Brain(model_name=learning.model, rolling_window=learning.rolling_window)
    budget = ReviewBudget(
        share=policy.review_budget,
        per_hour=policy.max_reviews_per_hour,
        slack=policy.review_budget_slack,
    )
    scorer = Scorer(
        brain=brain,
        prior=policy.prior,
        thresholds=Thresholds(
            escalate_below=policy.escalate_below,
            hold_below=policy.hold_below,
            ask_margin=policy.ask_margin,
        ),
        budget=budget,
        asker=AskLimiter(policy.ask_per_user_per_hour),
        ask_sample_rate=policy.ask_sample_rate,
        rng=rng,
        clock=clock,
    )
    deep = build_deep(
        settings, role == "all", scorer, brain, lambda: outbox.wake(), caps, clock, store=store
    )
    metrics = Metrics(
        auc_window=learning.rolling_window, learned=lambda: brain.last_label_id, deep=deep
    )
    items = ReviewItems(
        store=store,
        threshold=policy.escalate_below,
        votes_required=settings.review.votes_required,
    )
    # Masks what is stored, logged and sent to reviewers: built once, handed to each.
    redact = Redactor(settings.privacy.redact)
    review = build_channel(settings, secrets, redact=redact)
    outbox = Outbox(
        store=store,
        channel=review.channel,
        load_item=items.for_escalation,
        policy=retry or RetryPolicy(base_s=slack.retry_base_s, cap_s=slack.retry_max_s),
        clock=clock,
        rng=rng,
    )
    holds = Holds(
        store=store,
        timeout_s=policy.hold_timeout_s,
        fallback=policy.hold_fallback,
        poll_s=policy.hold_poll_s,
        clock=clock,
    )

    learner = Learner(
        store,
        brain,
        snapshot_every_labels=learning.snapshot_every_labels,
        snapshot_interval_s=learning.snapshot_interval_s,
        # A drift is announced to the reviewers by the outbox.
        on_drift=lambda event: outbox.wake(),
        leadership=leadership_for(store, learns=role != "serve"),
        # Only a fleet (PostgreSQL) has followers to publish to.
        publish_s=0.0 if is_sqlite(store.url) else learning.publish_interval_s,
        mode=learning.mode,
        batch_every_s=learning.batch_every_s,
        configured=built_with(learning.model),
        on_learned=None if deep is None else deep.wake,
        on_snapshot=None if deep is None else deep.snapshot,
    )

    def review_decided(outcome: ReviewOutcome) -> None:
        waited = (
            None
            if outcome.decided_at is None or outcome.created_at is None
            else outcome.decided_at - outcome.created_at
        )
        metrics.review_decided(outcome.state, waited)
        holds.decided(outcome)

    # After X, do Y: the whole list.
    hooks = Hooks(
        label_committed=learner.wake,
        review_queued=outbox.wake,
        rated=metrics.feedback,
        decided=review_decided,
    )
    complaints = ComplaintFlow(
        store=store,
        budget=budget,
        enabled=policy.review_downvotes,
        hooks=hooks,
        caps=caps,
        clock=clock,
    )
    decisions = DecisionFlow(
        store=store,
        items=items,
        reviewer_weight=learning.reviewer_weight,
        hooks=hooks,
        votes_required=settings.review.votes_required,
        redact=redact,
        clock=clock,
    )
    return Parts(
        settings=settings,
        role=role,
        secrets=secrets,
        store=store,
        upstream=upstream,
        signer=signer,
        brain=brain,
        learner=learner,
        scorer=scorer,
        metrics=metrics,
        items=items,
        outbox=outbox,
        review=review.with_desk(decisions),
        hooks=hooks,
        replies=ReplyFlow(
            scorer=scorer,
            store=store,
            hooks=hooks,
            observer=metrics,
            log_bodies=settings.server.log_bodies,
            redact=redact,
            caps=caps,
            clock=clock,
            deep=deep,
        ),
        votes=VoteFlow(
            store=store,
            signer=signer,
            user_weight=learning.user_weight,
            complaints=complaints,
            hooks=hooks,
            redact=redact,
        ),
        decisions=decisions,
        complaints=complaints,
        holds=holds,
        feedback_limit=per_minute(
            settings.server.feedback_per_minute, name="feedback", quotas=quotas
        ),
        quotas=quotas,
        # Held clients wait through the shutdown grace, then get the fallback.
        draining=Draining(settings.server.shutdown_grace_s, at_expiry=holds.stop_waiting),
        retention=Retention(store=store, retain_days=settings.privacy.retain_days, clock=clock),
        deep=deep,
    )
