"""Prometheus metrics, one registry per app (never the global one).

The request path only bumps counters and histograms: a handful of cheap calls per
request, no I/O. What lives in the store (pending escalations, dead letters, outbox
lag, the model's recent ROC AUC) is read once per scrape by ``refresh()``, in one store
call (``Store.gauges``), which the ``/metrics`` route awaits before rendering.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from feedback_store import Store, StoreError, StoreGauges

log = logging.getLogger("hitl.metrics")

UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
REVIEW_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400)

Endpoint = Callable[[Request], Awaitable[Response]]


class ExchangeObserver(Protocol):
    """What the chat endpoint reports once a reply is scored and recorded."""

    def exchange(
        self, *, decision: str, status: int, upstream_ms: float, total_ms: float
    ) -> None: ...


class FeedbackObserver(Protocol):
    """What the feedback endpoint reports once a vote is committed."""

    def feedback(self, rating: str, source: str) -> None: ...


class NoMetrics:
    """The do-nothing default for endpoints built without metrics (tests, tools)."""

    def exchange(self, *, decision: str, status: int, upstream_ms: float, total_ms: float) -> None:
        pass

    def feedback(self, rating: str, source: str) -> None:
        pass

    def review_decided(self, state: str, seconds: float | None) -> None:
        pass


class _StoreCollector(Collector):
    """Values read from the store at scrape time; a value not known is left out."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        v = self.values
        yield GaugeMetricFamily(
            "hitl_store_up", "1 if the last scrape could read the store", value=v.get("up", 0.0)
        )
        described = (
            ("pending", "hitl_escalations_pending", "escalations waiting for a reviewer"),
            ("dead_letter", "hitl_escalations_dead_letter", "escalations the channel refused"),
            ("unposted", "hitl_outbox_unposted", "escalations not yet posted to the channel"),
            ("outbox_lag", "hitl_outbox_lag_seconds", "age of the oldest unposted escalation"),
            ("learner_lag", "hitl_learner_lag_labels", "labels committed but not yet learned"),
            ("roc_auc", "hitl_model_roc_auc", "progressive ROC AUC over the latest labels"),
        )
        for key, name, text in described:
            if key in v:
                yield GaugeMetricFamily(name, text, value=v[key])


class DeepCounts(Protocol):
    """What the deeper look has done so far (``middleware.flows.deep.DeepCounts``)."""

    @property
    def scored(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def escalated(self) -> int: ...
    @property
    def released(self) -> int: ...
    @property
    def restarts(self) -> int: ...
    @property
    def labels(self) -> int: ...


class DeepLook(Protocol):
    def counts(self) -> DeepCounts: ...


_DEEP_COUNTERS = (
    ("scored", "hitl_deep_scored", "replies the deeper look scored"),
    ("skipped", "hitl_deep_skipped", "replies the deeper look skipped: traffic outran it"),
    ("failed", "hitl_deep_failed", "replies left to the live model: the worker died"),
    ("escalated", "hitl_deep_escalated", "delivered replies the deeper look sent to review"),
    ("released", "hitl_deep_released", "held replies the deeper look released"),
    ("restarts", "hitl_deep_worker_restarts", "restarts of the embedding worker"),
)


class _DeepCollector(Collector):
    """The deeper look's counts, read at scrape time (no work on the request path)."""

    def __init__(self, deep: DeepLook) -> None:
        self.deep = deep

    def collect(self) -> Iterator[Metric]:
        counts = self.deep.counts()
        for key, name, text in _DEEP_COUNTERS:
            yield CounterMetricFamily(name, text, value=getattr(counts, key))
        yield GaugeMetricFamily(
            "hitl_deep_labels", "labels the deeper look has learned", value=counts.labels
        )


class Metrics:
    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        auc_window: int = 500,
        min_refresh_s: float = 1.0,
        learned: Callable[[], int | None] | None = None,
        clock: Callable[[], float] = time.time,
        deep: DeepLook | None = None,
    ) -> None:
        """``learned()`` is the id of the newest label the learner has learned; ``deep``
        the deeper look, when it runs."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.auc_window = auc_window
        self.min_refresh_s = min_refresh_s
        self.clock = clock
        r = self.registry
        self._requests = Counter(
            "hitl_requests",
            "chat completion requests by decision and HTTP status",
            ["decision", "status"],
            registry=r,
        )
        self._upstream = Histogram(
            "hitl_upstream_latency_seconds",
            "time the upstream model took (to the last byte for streams)",
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self._overhead = Histogram(
            "hitl_gateway_overhead_seconds",
            "time the gateway added around the upstream (parsing, scoring, recording)",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self._feedback = Counter(
            "hitl_feedback",
            "votes and verdicts by rating and source",
            ["rating", "source"],
            registry=r,
        )
        self._review_latency = Histogram(
            "hitl_review_latency_seconds",
            "from escalation to a reviewer's decision",
            buckets=REVIEW_BUCKETS,
            registry=r,
        )
        self._reviews = Counter(
            "hitl_review_decisions", "reviewer decisions by verdict", ["state"], registry=r
        )
        self._store = _StoreCollector()
        r.register(self._store)
        if deep is not None:
            r.register(_DeepCollector(deep))
        # Children cached by label values: labels() takes a lock and builds a tuple.
        self._request_children: dict[tuple[str, int], Any] = {}
        self._learner_position = learned
        self._refreshed_at = float("-inf")

    # -- the request path (cheap, no I/O) ----------------------------------------------

    def exchange(self, *, decision: str, status: int, upstream_ms: float, total_ms: float) -> None:
        key = (decision, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests.labels(decision, str(status))
            self._request_children[key] = child
        child.inc()
        self._upstream.observe(upstream_ms / 1000.0)
        self._overhead.observe(max(0.0, total_ms - upstream_ms) / 1000.0)

    def failed(self, status: int) -> None:
        """A chat request answered with an error before a reply was scored."""
        key = ("none", status)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests.labels("none", str(status))
            self._request_children[key] = child
        child.inc()

    def count_errors(self, endpoint: Endpoint) -> Endpoint:
        """Wrap the chat endpoint so error answers are counted too (scored replies count
        themselves through ``exchange``)."""

        async def counted(request: Request) -> Response:
            response = await endpoint(request)
            if response.status_code >= 400:
                self.failed(response.status_code)
            return response

        return counted

    def feedback(self, rating: str, source: str) -> None:
        self._feedback.labels(rating, source).inc()

    def review_decided(self, state: str, seconds: float | None) -> None:
        """A reviewer's verdict was committed: ``state`` approved, rejected or corrected."""
        self._reviews.labels(state).inc()
        self.feedback("up" if state == "approved" else "down", "reviewer")
        if seconds is not None and seconds >= 0:
            self._review_latency.observe(seconds)

    # -- the scrape ---------------------------------------------------------------------

    async def refresh(self, store: Store) -> None:
        """Read the store-backed gauges (at most once per ``min_refresh_s``)."""
        now = self.clock()
        if now - self._refreshed_at < self.min_refresh_s:
            return
        self._refreshed_at = now
        try:
            values = self._values(await store.gauges(auc_window=self.auc_window), now)
        except StoreError as exc:
            log.warning("metrics: the store could not be read (%s)", exc)
            values = {"up": 0.0}
        self._store.values = values

    def _values(self, gauges: StoreGauges, now: float) -> dict[str, float]:
        oldest = gauges.oldest_unposted_at
        values = {
            "up": 1.0,
            "pending": float(gauges.unposted + gauges.posted),
            "dead_letter": float(gauges.failed),
            "unposted": float(gauges.unposted),
            "outbox_lag": max(0.0, now - oldest) if gauges.unposted and oldest is not None else 0.0,
        }
        if gauges.recent_roc_auc is not None:
            values["roc_auc"] = gauges.recent_roc_auc
        if self._learner_position is not None:
            learned = self._learner_position()
            if learned is not None:
                newest = gauges.newest_label_id or 0
                values["learner_lag"] = float(max(0, newest - learned))
        return values

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
