"""The ASGI app: routes over the parts, the lifespan, and the one place where errors
become HTTP answers.

``create_app(settings)`` is what ``hitl serve`` runs; ``build_app(parts)`` takes parts
already built (tests that look inside keep them). Nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from feedback_store import StoreError
from middleware.app.parts import Parts, build_parts
from middleware.errors import Refused, StoreUnavailable
from middleware.http.auth import ClientKeyMiddleware
from middleware.http.chat import ChatEndpoint
from middleware.http.clients import ClientAddressMiddleware, TrustedProxies
from middleware.http.deadline import BodyDeadline
from middleware.http.events import ChannelEventsEndpoint
from middleware.http.feedback import FeedbackEndpoint
from middleware.http.passthrough import Passthrough
from middleware.http.reports import ReportEndpoints, chat_page_routes, report_routes
from middleware.http.responses import RETRY_AFTER_S, error_response, json_response
from middleware.http.review_page import ReviewPage
from middleware.http.reviewers import Reviewers, parse_tokens
from middleware.http.reviews import ReviewAPI
from middleware.settings import Settings

log = logging.getLogger("hitl")

EXPOSED_HEADERS = [
    "X-HITL-Reply-Id",
    "X-HITL-Feedback-Token",
    "X-HITL-Confidence",
    "X-HITL-Decision",
]


def create_app(settings: Settings, **overrides: Any) -> Starlette:
    """The gateway for ``settings``; ``overrides`` go to ``build_parts``."""
    return build_app(build_parts(settings, **overrides))


def model_version(parts: Parts) -> dict[str, Any]:
    """Which model this process serves: the labels it has learned (its version), and
    whether it learns them itself or follows the fleet learner's snapshots."""
    brain, learner = parts.brain, parts.learner
    return {
        "labels": brain.labels,
        "last_label_id": brain.last_label_id,
        "learner": "leading" if learner.leading else "following",
        "snapshot_id": learner.follower.snapshot_id,
        # ``hitl models``: the version served, the promotion or rollback it came from
        "version": brain.version,
        "generation": brain.generation,
        "fingerprint": brain.fingerprint,
        "settings_differ": learner.mismatch is not None,
    }


def routes(parts: Parts) -> list[BaseRoute]:
    settings, secrets, store = parts.settings, parts.secrets, parts.store
    chat = ChatEndpoint(
        upstream=parts.upstream,
        replies=parts.replies,
        signer=parts.signer,
        api_key=secrets.upstream_api_key,
        forward_client_auth=settings.upstream.forward_client_auth,
        max_body_bytes=settings.server.max_body_bytes,
        stream_hitl_chunk=settings.server.stream_hitl_chunk,
        holds=parts.holds,
        draining=parts.draining,
        risky_models=frozenset(settings.policy.risky_models),
        heartbeat_s=settings.policy.hold_heartbeat_s,
        request_logprobs=settings.upstream.logprobs,
    )
    passthrough = Passthrough(
        upstream=parts.upstream,
        api_key=secrets.upstream_api_key,
        forward_client_auth=settings.upstream.forward_client_auth,
        max_body_bytes=settings.server.max_body_bytes,
        routes=settings.upstream.passthrough,
    )
    feedback = FeedbackEndpoint(
        votes=parts.votes,
        max_body_bytes=settings.server.max_feedback_bytes,
        limit=parts.feedback_limit,
    )
    reviewers = Reviewers(
        parse_tokens(secrets.reviewer_tokens, variable=settings.review.reviewer_tokens_env),
        secrets.admin_token,
        tokens_env=settings.review.reviewer_tokens_env,
        admin_env=settings.report.admin_token_env,
    )
    review_page = ReviewPage(
        store=store,
        decisions=parts.decisions,
        reviewers=reviewers,
        model=parts.brain,
        threshold=settings.policy.escalate_below,
        votes_required=settings.review.votes_required,
    )
    reviews = ReviewAPI(
        store=store,
        signer=parts.signer,
        decisions=parts.decisions,
        reviewers=reviewers,
        model=parts.brain,
    )
    reports = ReportEndpoints(
        store=store,
        metrics=parts.metrics,
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
            "model": model_version(parts),
            # Which process of a fleet answered (behind one port, any of them may).
            "process": {"pid": os.getpid(), "role": parts.role},
        }
        if ok:
            try:
                counts = await store.review_counts()
                body["review"] = {
                    "failed": counts.failed,
                    "pending": counts.pending,
                }
            except StoreError:
                body["review"] = {"failed": None, "pending": None}
        if ok:
            return json_response(body)
        return json_response(body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    table: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route(
            "/v1/chat/completions", parts.metrics.count_errors(chat.completions), methods=["POST"]
        ),
        Route("/v1/feedback", feedback.post, methods=["POST"]),
        Route("/v1/replies/{reply_id}", reviews.get_reply, methods=["GET"]),
        Route("/v1/replies/{reply_id}/explanation", reviews.explain, methods=["GET"]),
        Route("/v1/reviews/{reply_id}", reviews.post_review, methods=["POST"]),
        Route("/review", review_page.get, methods=["GET"]),
        Route("/review/{reply_id}", review_page.post, methods=["POST"]),
    ]
    if parts.review.events is not None:
        events = ChannelEventsEndpoint(events=parts.review.events)
        table.append(Route("/slack/events", events.post, methods=["POST"]))
    return [
        *table,
        *report_routes(reports),
        *chat_page_routes(),
        Route("/v1/{path:path}", passthrough.post, methods=["GET", "POST", "DELETE"]),
    ]


def middleware(parts: Parts) -> list[Middleware]:
    settings, secrets = parts.settings, parts.secrets
    stack = []
    trusted = TrustedProxies(settings.server.trusted_proxies)
    if trusted:
        # First: everything after it (rate limits, logs) sees the real client.
        stack.append(Middleware(ClientAddressMiddleware, trusted=trusted))
    stack.append(Middleware(BodyDeadline, timeout_s=settings.server.body_timeout_s))
    if settings.server.cors_origins:
        stack.append(
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
        stack.append(Middleware(ClientKeyMiddleware, keys=secrets.client_keys))
    return stack


async def refused(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, Refused):  # registered for Refused only
        raise exc
    return error_response(exc.status_code, str(exc), exc.code, param=exc.param)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    # The store's reason goes to the log; the client learns only that it can retry.
    log.error("%s %s: %s", request.method, request.url.path, exc)
    public = exc.public if isinstance(exc, StoreUnavailable) else "the store is unavailable; retry"
    return error_response(503, public, "store_unavailable")


async def not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, f"no route for {request.method} {request.url.path}", "not_found")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(
        405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
    )


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error in the gateway; see its log", "internal_error")


def build_app(parts: Parts) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await parts.start()
        try:
            yield
        finally:
            await parts.stop()

    app = Starlette(
        routes=routes(parts),
        middleware=middleware(parts),
        lifespan=lifespan,
        exception_handlers={
            Refused: refused,
            StoreUnavailable: store_unavailable,
            StoreError: store_unavailable,
            404: not_found,
            405: method_not_allowed,
            500: server_error,
        },
    )
    app.state.parts = parts
    return app
