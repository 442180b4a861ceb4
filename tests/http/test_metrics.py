"""Prometheus metrics, the admin token on the report, and the per-request log line."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response

from feedback_store import NewEscalation, Store
from middleware.logs import JsonFormatter
from middleware.metrics import Metrics
from tests.conftest import GatewayFactory
from tests.support.report_data import T0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the registry -----------------------------------------------------------------------


def test_each_app_has_its_own_registry_and_every_name_says_hitl() -> None:
    one, two = Metrics(), Metrics()
    one.exchange(decision="ask", status=200, upstream_ms=120.0, total_ms=123.0)
    text = one.exposition().decode()
    assert value(text, "hitl_requests_total", decision="ask", status="200") == 1.0
    assert (
        value(two.exposition().decode(), "hitl_requests_total", decision="ask", status="200") == 0
    )
    names = {s[0] for s in samples(text)}
    assert names and all(name.startswith("hitl_") for name in names)


def test_request_path_counters_and_histograms() -> None:
    metrics = Metrics()
    for decision in ("deliver", "deliver", "escalate"):
        metrics.exchange(decision=decision, status=200, upstream_ms=40.0, total_ms=41.5)
    metrics.feedback("down", "user")
    metrics.review_decided("corrected", 90.0)
    metrics.review_decided("approved", None)
    text = metrics.exposition().decode()
    assert value(text, "hitl_requests_total", decision="deliver", status="200") == 2
    assert value(text, "hitl_requests_total", decision="escalate", status="200") == 1
    assert value(text, "hitl_upstream_latency_seconds_count") == 3
    assert value(text, "hitl_upstream_latency_seconds_sum") == pytest.approx(0.12)
    # 1.5 ms of overhead each: inside the 2 ms bucket, outside the 1 ms one.
    assert value(text, "hitl_gateway_overhead_seconds_bucket", le="0.002") == 3
    assert value(text, "hitl_gateway_overhead_seconds_bucket", le="0.001") == 0
    assert value(text, "hitl_feedback_total", rating="down", source="user") == 1
    assert value(text, "hitl_feedback_total", rating="down", source="reviewer") == 1
    assert value(text, "hitl_feedback_total", rating="up", source="reviewer") == 1
    assert value(text, "hitl_review_decisions_total", state="corrected") == 1
    assert value(text, "hitl_review_latency_seconds_count") == 1
    assert value(text, "hitl_review_latency_seconds_bucket", le="120.0") == 1


async def test_count_errors_counts_only_error_answers() -> None:
    metrics = Metrics()
    answers = iter([Response(status_code=200), Response(status_code=422)])

    async def endpoint(request: Request) -> Response:
        return next(answers)

    counted = metrics.count_errors(endpoint)
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    assert (await counted(request)).status_code == 200
    assert (await counted(request)).status_code == 422
    text = metrics.exposition().decode()
    assert value(text, "hitl_requests_total", decision="none", status="422") == 1
    assert value(text, "hitl_requests_total", decision="none", status="200") == 0


async def test_scrape_reads_backlog_dead_letters_auc_and_learner_lag(known_store: Store) -> None:
    clock = Clock(T0 + 1000)
    metrics = Metrics(clock=clock, learned=lambda: 4)
    await known_store.add_escalation(
        NewEscalation(
            reply_id="e8",
            state="pending",
            trigger="downvote",
            created_at=T0 + 970,
            next_attempt_at=T0 + 970,
        )
    )
    await metrics.refresh(known_store)
    text = metrics.exposition().decode()
    assert value(text, "hitl_store_up") == 1
    assert value(text, "hitl_escalations_pending") == 2  # e5 in the channel, e8 not yet posted
    assert value(text, "hitl_escalations_dead_letter") == 1  # e7
    assert value(text, "hitl_outbox_unposted") == 1
    assert value(text, "hitl_outbox_lag_seconds") == pytest.approx(30.0)
    assert value(text, "hitl_model_roc_auc") == 1.0
    assert value(text, "hitl_learner_lag_labels") == 2  # 6 labels, 4 learned

    # Within a second the figures are reused, not read again.
    await known_store.add_escalation(
        NewEscalation(
            reply_id="e1", state="failed", trigger="policy", created_at=T0, next_attempt_at=T0
        )
    )
    clock.now += 0.5
    await metrics.refresh(known_store)
    assert value(metrics.exposition().decode(), "hitl_escalations_dead_letter") == 1
    clock.now += 1.0
    await metrics.refresh(known_store)
    assert value(metrics.exposition().decode(), "hitl_escalations_dead_letter") == 2


async def test_scrape_says_when_the_store_is_unreadable(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'gone.db'}", config_hint="test.toml")
    metrics = Metrics()
    await metrics.refresh(store)  # never started: unreadable
    text = metrics.exposition().decode()
    assert value(text, "hitl_store_up") == 0
    assert ("hitl_escalations_pending", ()) not in samples(text)


# -- through the gateway -----------------------------------------------------------------------


def chat(url: str, **body: Any) -> httpx.Response:
    payload = {"model": "json", "messages": [{"role": "user", "content": "hello"}], **body}
    return httpx.post(url + "/v1/chat/completions", json=payload, timeout=10)


def test_metrics_move_when_traffic_flows(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(policy={"escalate_below": 0.9, "review_budget": 1.0})
    # Store-backed figures are reused for a second between scrapes; read them every time.
    app: Any = gw.config.app
    app.state.parts.metrics.min_refresh_s = 0.0
    before = httpx.get(gw.url + "/metrics").text
    assert value(before, "hitl_upstream_latency_seconds_count") == 0

    hitl = chat(gw.url).json()["hitl"]
    assert hitl["decision"] == "escalate"
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={
            "model": "json",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    ) as streamed:
        assert b"[DONE]" in b"".join(streamed.iter_bytes())
    assert chat(gw.url, messages=[]).status_code == 400
    assert chat(gw.url, model="fail-500").status_code == 502
    vote = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "down"}
    assert httpx.post(gw.url + "/v1/feedback", json=vote).status_code == 201

    response = httpx.get(gw.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert value(after, "hitl_requests_total", decision="escalate", status="200") == 2
    assert value(after, "hitl_requests_total", decision="none", status="400") == 1
    assert value(after, "hitl_requests_total", decision="none", status="502") == 1
    assert value(after, "hitl_upstream_latency_seconds_count") == 2
    assert value(after, "hitl_gateway_overhead_seconds_count") == 2
    assert value(after, "hitl_feedback_total", rating="down", source="user") == 1
    assert value(after, "hitl_escalations_pending") == 2
    assert value(after, "hitl_store_up") == 1


def test_admin_token_guards_the_report_and_optionally_the_metrics(
    gateway_factory: GatewayFactory,
) -> None:
    environ = {"HITL_ADMIN_TOKEN": "s3cret"}
    gw = gateway_factory(environ=environ)
    for path in ("/report", "/report.json", "/report.csv"):
        refused = httpx.get(gw.url + path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "invalid_admin_token"
        assert "$HITL_ADMIN_TOKEN" in refused.json()["error"]["message"]
        assert refused.headers["www-authenticate"].startswith("Basic")
        wrong = httpx.get(gw.url + path, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (
            httpx.get(gw.url + path, headers={"authorization": "Bearer s3cret"}).status_code == 200
        )
    basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
    page = httpx.get(gw.url + "/report", headers={"authorization": basic})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert httpx.get(gw.url + "/metrics").status_code == 200  # open unless protect_metrics

    guarded = gateway_factory(environ=environ, report={"protect_metrics": True})
    assert httpx.get(guarded.url + "/metrics").status_code == 401
    scrape = httpx.get(guarded.url + "/metrics", headers={"authorization": "Bearer s3cret"})
    assert scrape.status_code == 200
    assert value(scrape.text, "hitl_store_up") == 1


def test_report_is_open_when_no_admin_token_is_set(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    chat(gw.url)
    report = httpx.get(gw.url + "/report.json").json()
    assert report["exchanges"] == 1
    bad = httpx.get(gw.url + "/report.json", params={"since": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    csv_text = httpx.get(gw.url + "/report.csv").text
    assert csv_text.count("\n") == 2  # the header and one exchange


# -- the log line -------------------------------------------------------------------------------


def chat_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hitl.chat" and hasattr(r, "fields")]


def test_one_log_line_per_request_without_bodies(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hitl.chat")
    gw = gateway_factory(environ={"OPENAI_API_KEY": "sk-upstream-secret"})
    hitl = chat(gw.url, messages=[{"role": "user", "content": "my card is 4111"}]).json()["hitl"]
    [record] = chat_records(caplog)
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["reply_id"] == hitl["reply_id"]
    assert fields["decision"] == hitl["decision"]
    assert fields["upstream_ms"] >= 0 and fields["total_ms"] >= fields["upstream_ms"]
    line = JsonFormatter().format(record)
    entry = orjson.loads(line)
    assert entry["reply_id"] == hitl["reply_id"] and entry["level"] == "info"
    assert "4111" not in line and "question" not in entry and "reply" not in entry
    assert "sk-upstream-secret" not in line
    assert hitl["feedback_token"] not in line


def test_log_bodies_puts_question_and_reply_in_the_line(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hitl.chat")
    gw = gateway_factory(server={"log_bodies": True})
    chat(gw.url, messages=[{"role": "user", "content": "what time is it"}])
    [record] = chat_records(caplog)
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["question"] == "what time is it"
    assert fields["reply"] == "reply: what time is it"
