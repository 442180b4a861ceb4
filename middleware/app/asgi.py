"""The composition root: the only place that knows every part.

``build_app(settings)`` builds the store, the upstream adapter, the scorer and the
routes; long-lived resources (engine, HTTP pool, background tasks) open in the
lifespan and close on shutdown. Nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from feedback_store import SchemaError, Store, StoreError
from middleware.app.review import build_review
from middleware.errors import ConfigError, SchemaOutdated, StoreUnavailable
from middleware.flows.reply import Recorder
from middleware.http.auth import ClientKeyMiddleware
from middleware.http.chat import ChatEndpoint
from middleware.http.feedback import FeedbackEndpoint
from middleware.http.ratelimit import RateLimiter
from middleware.http.reports import ReportEndpoints, chat_page_routes, report_routes
from middleware.http.responses import error_response, json_response
from middleware.learning.learner import Brain, Learner
from middleware.metrics import Metrics
from middleware.ports import Upstream
from middleware.scoring.policy import AskLimiter, ReviewBudget, Thresholds
from middleware.scoring.scorer import Scorer
from middleware.scoring.tokens import TokenSigner, new_secret
from middleware.settings import Secrets, Settings

log = logging.getLogger("hitl")

EXPOSED_HEADERS = [
    "X-HITL-Reply-Id",
    "X-HITL-Feedback-Token",
    "X-HITL-Confidence",
    "X-HITL-Decision",
]


def build_upstream(settings: Settings, secrets: Secrets) -> Upstream:
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


@dataclass
class Gateway:
    """Everything the app holds, for the lifespan and for tests that look inside."""

    settings: Settings
    secrets: Secrets
    store: Store
    upstream: Upstream
    signer: TokenSigner
    scorer: Scorer
    learner: Learner
    extras: dict[str, Any] = field(default_factory=dict)


def build_app(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    upstream: Upstream | None = None,
    store: Store | None = None,
    rng: random.Random | None = None,
) -> Starlette:
    environ = os.environ if environ is None else environ
    secrets = Secrets(settings, environ)
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
    store = store or Store(
        settings.store.url,
        commit_batch=settings.store.commit_batch,
        config_hint=settings.source if settings.source != "built-in defaults" else "config.toml",
    )
    upstream = upstream or build_upstream(settings, secrets)
    signer = TokenSigner()
    policy = settings.policy
    brain = Brain(rolling_window=settings.learner.rolling_window)
    learner = Learner(
        store,
        brain,
        snapshot_every_labels=settings.learner.snapshot_every_labels,
        snapshot_interval_s=settings.learner.snapshot_interval_s,
    )
    store.on_label(learner.wake)
    scorer = Scorer(
        brain=brain,
        prior=policy.prior,
        thresholds=Thresholds(
            escalate_below=policy.escalate_below,
            hold_below=policy.hold_below,
            ask_margin=policy.ask_margin,
        ),
        budget=ReviewBudget(
            share=policy.review_budget,
            per_hour=policy.max_reviews_per_hour,
            slack=policy.review_budget_slack,
        ),
        asker=AskLimiter(policy.ask_per_user_per_hour),
        ask_sample_rate=policy.ask_sample_rate,
        risky_models=frozenset(policy.risky_models),
        rng=rng,
    )
    gateway = Gateway(settings, secrets, store, upstream, signer, scorer, learner)
    review = build_review(settings, secrets, store, signer=signer, budget=scorer.budget)
    gateway.extras["review"] = review
    recorder = Recorder(store, on_escalation=review.on_escalation)
    metrics = Metrics(auc_window=settings.learner.rolling_window)
    gateway.extras["metrics"] = metrics
    metrics.bind_learner(lambda: learner.brain.last_label_id)
    review.service.on_decision(
        lambda outcome: metrics.review_decided(
            outcome.state,
            None
            if outcome.decided_at is None or outcome.created_at is None
            else outcome.decided_at - outcome.created_at,
        )
    )
    chat = ChatEndpoint(
        upstream=upstream,
        scorer=scorer,
        signer=signer,
        record=recorder,
        api_key=secrets.upstream_api_key,
        forward_client_auth=settings.upstream.forward_client_auth,
        max_body_bytes=settings.server.max_body_bytes,
        stream_hitl_chunk=settings.server.stream_hitl_chunk,
        observer=metrics,
        log_bodies=settings.server.log_bodies,
    )
    feedback = FeedbackEndpoint(
        store=store,
        signer=signer,
        max_body_bytes=settings.server.max_feedback_bytes,
        user_weight=settings.learner.user_weight,
        limiter=RateLimiter(settings.server.feedback_per_minute),
        on_downvote=review.on_downvote,
        metrics=metrics,
    )
    reports = ReportEndpoints(
        store=store,
        metrics=metrics,
        admin_token=secrets.admin_token,
        admin_token_env=settings.report.admin_token_env,
        protect_metrics=settings.report.protect_metrics,
        window=settings.learner.rolling_window,
    )

    async def healthz(request: Request) -> Response:
        ok = await store.ping()
        body: dict[str, Any] = {
            "status": "ok" if ok else "unavailable",
            "store": "ok" if ok else "unreachable",
        }
        if ok:
            body["review"] = await review.health()
        return json_response(body, status=200 if ok else 503)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/chat/completions", metrics.count_errors(chat.completions), methods=["POST"]),
        Route("/v1/feedback", feedback.post, methods=["POST"]),
        *review.routes,
        *report_routes(reports),
        *chat_page_routes(),
        Route("/v1/{path:path}", chat.passthrough, methods=["GET", "POST", "DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await store.start()
        except SchemaError as exc:
            raise SchemaOutdated(str(exc)) from exc
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from exc
        try:
            secret = secrets.token_secret or await store.get_or_create_value(
                "feedback_token_secret", new_secret
            )
            try:
                signer.set_secret(secret)
            except ValueError as exc:
                raise ConfigError(
                    f"${settings.server.token_secret_env}: {exc} (or unset it to let the "
                    "gateway generate and keep one)"
                ) from None
            # Learn every label the store holds before the port opens.
            replayed = await learner.restore()
            if replayed:
                log.info("learned %d labels committed since the last model snapshot", replayed)
            learner.start()
            await upstream.start()
            await review.start()
            # Everything built so far lives as long as the app: keep the cyclic garbage
            # collector from walking it again on every full collection (latency spikes).
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                await review.stop()
                await upstream.aclose()
                await learner.close()
        finally:
            await store.close()

    middleware = []
    if settings.server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.server.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "x-hitl-feedback-token",
                    "x-hitl-user",
                    "x-hitl-risk",
                ],
                expose_headers=EXPOSED_HEADERS,
            )
        )
    if secrets.client_keys:
        middleware.append(Middleware(ClientKeyMiddleware, keys=secrets.client_keys))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, f"no route for {request.method} {request.url.path}", "not_found")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(
            405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error in the gateway; see its log", "internal_error")

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )
    app.state.gateway = gateway
    return app
