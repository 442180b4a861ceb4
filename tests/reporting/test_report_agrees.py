"""The report agrees with itself: its cards and its charts count the same reviews, and
charts with little data have axes a person can read (whole-number counts, no axis
spanning a hair around one point).

The store is a real SQLite file written through the store's own API; the figures are
read back from the report's data and from the ticks drawn in each chart's SVG.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from feedback_store import NewEscalation, Store
from feedback_store.report import build_report, load_rows
from middleware.reporting import render_html
from tests.support.report_data import T0, exchange_row

#: three replies escalated within two minutes, decided an hour after the last of them
ESCALATED = [("r1", 0.0), ("r2", 60.0), ("r3", 120.0)]
DECIDED_AFTER_S = 3600.0


@pytest.fixture
async def late_reviews(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'late.db'}")
    await store.start()
    try:
        for index, (reply_id, offset) in enumerate(ESCALATED):
            row = exchange_row(reply_id, offset, "m", "escalate", 0.2, "where is it", {}, index)
            at = T0 + offset
            await store.record_exchange(
                row,
                NewEscalation(
                    reply_id=reply_id, trigger="policy", created_at=at, next_attempt_at=at
                ),
            )
        for reply_id, offset in ESCALATED:
            await store.record_review(
                reply_id=reply_id,
                state="approved" if reply_id != "r2" else "rejected",
                reviewer="U1",
                reason=None if reply_id != "r2" else "incorrect",
                correction=None,
                value=1 if reply_id != "r2" else 0,
                weight=3.0,
                now=T0 + 120.0 + DECIDED_AFTER_S + offset,
            )
        yield store
    finally:
        await store.close()


def ticks(svg: str, axis: int = 2) -> list[float]:
    """The numbers matplotlib wrote along one axis of a chart's SVG: axis 1 is the first
    plot's x axis, 2 its y axis (3 and 4 a twin's)."""
    start = svg.index(f'matplotlib.axis_{axis}"')
    following = svg.find("matplotlib.axis_", start + 20)
    part = svg[start : following if following != -1 else len(svg)]
    found = []
    for text in re.findall(r"<text[^>]*>([^<]*)</text>", part):
        try:
            found.append(float(text.strip().replace("\u2212", "-")))
        except ValueError:
            continue  # the axis label
    return found


def chart(page: str, prefix: str) -> str:
    start = page.index(f'id="{prefix}-')
    return page[page.rindex("<svg", 0, start) : page.index("</svg>", start)]


async def test_decisions_after_the_last_exchange_count_in_the_charts(late_reviews: Store) -> None:
    report = build_report(await load_rows(late_reviews), now=T0 + 2 * DECIDED_AFTER_S)
    buckets = report["timeline"]["buckets"]
    assert report["reviews"]["decided"] == 3
    # The cards and the charts count the same decisions (before: the chart had none,
    # its buckets ending at the last exchange, an hour before the first decision).
    assert sum(b["decided"] for b in buckets) == 3
    assert sum(b["escalated"] for b in buckets) == 3
    waits = [b["median_seconds_to_decision"] for b in buckets if b["decided"]]
    assert waits and all(w == pytest.approx(DECIDED_AFTER_S + 120.0, abs=121) for w in waits)
    page = render_html(report)
    assert "3 decided" in page
    assert "No reviewer decisions in this period." not in page
    assert 'id="review-time-' in page


async def test_little_data_draws_whole_number_ticks(late_reviews: Store) -> None:
    report = build_report(await load_rows(late_reviews), now=T0 + 2 * DECIDED_AFTER_S)
    page = render_html(report)
    for prefix in ("volume", "reviews"):
        values = ticks(chart(page, prefix))
        assert len(values) >= 2, f"no y ticks found in the {prefix} chart"
        assert all(v == int(v) for v in values), f"{prefix}: fractional counts {values}"
        assert min(values) == 0.0, f"{prefix}: the count axis does not start at 0: {values}"


async def test_one_point_gets_an_axis_around_it_not_a_hair(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'one.db'}")
    await store.start()
    try:
        row = exchange_row("only", 0.0, "m", "escalate", 0.2, "hello", {}, 0)
        await store.record_exchange(
            row, NewEscalation(reply_id="only", trigger="policy", created_at=T0, next_attempt_at=T0)
        )
        await store.record_review(
            reply_id="only",
            state="approved",
            reviewer="U1",
            reason=None,
            correction=None,
            value=1,
            weight=3.0,
            now=T0 + 180.0,
        )
        report = build_report(await load_rows(store), now=T0 + 600)
    finally:
        await store.close()
    page = render_html(report)
    minutes = ticks(chart(page, "review-time"))
    # One decision after 3 minutes: an axis from 0 past 3, never 2.85 to 3.15.
    assert minutes[0] == 0.0 and max(minutes) >= 3.0, minutes
    for prefix in ("volume", "reviews"):
        counts = ticks(chart(page, prefix))
        assert counts[0] == 0.0 and counts == [int(c) for c in counts], (prefix, counts)
    assert json.dumps(report["timeline"]["buckets"][0]["decided"]) == "1"


async def test_reviews_opened_after_the_reply_count_as_sent_and_in_the_chart(
    tmp_path: Path,
) -> None:
    # One escalated by the policy, one by a thumbs-down, one decided through the review
    # API though nobody escalated it, one never reviewed: three items went to people.
    store = Store(f"sqlite:///{tmp_path / 'later.db'}")
    await store.start()
    try:
        for index, (reply_id, decision) in enumerate(
            [("policy", "escalate"), ("down", "deliver"), ("api", "deliver"), ("none", "deliver")]
        ):
            row = exchange_row(reply_id, 10.0 * index, "m", decision, 0.2, "where", {}, index)
            at = T0 + 10.0 * index
            escalation = (
                NewEscalation(
                    reply_id=reply_id, trigger="policy", created_at=at, next_attempt_at=at
                )
                if decision == "escalate"
                else None
            )
            await store.record_exchange(row, escalation)
        assert await store.open_review("down", trigger="downvote", now=T0 + 100.0) is not None
        for reply_id in ("policy", "down", "api"):
            decided = await store.record_review(
                reply_id=reply_id, state="approved", reviewer="U1", reason=None,
                correction=None, value=1, weight=3.0, now=T0 + 200.0,
            )  # fmt: skip
            assert decided is not None
        report = build_report(await load_rows(store), now=T0 + 600)
    finally:
        await store.close()
    buckets = report["timeline"]["buckets"]
    assert report["reviews"]["escalated"] == 3 and report["reviews"]["after_reply"] == 2
    assert sum(b["escalated"] for b in buckets) == sum(b["decided"] for b in buckets) == 3
    assert all(b["decided"] <= b["escalated"] for b in buckets)
    page = render_html(report)
    card = page[page.index("<h3>Sent to people</h3>") :]
    card = card[: card.index("</div>")]
    assert '<p class="value">3</p>' in card and "2 after the reply" in card
    assert "75.0% of exchanges" in card


def tick_labels(svg: str, axis: int = 1) -> list[str]:
    """The text matplotlib wrote at each tick of one axis (axis 1: the first x axis)."""
    start = svg.index(f'matplotlib.axis_{axis}"')
    part = svg[start : svg.find("matplotlib.axis_", start + 20)]
    return re.findall(r"<!-- ([^>]*?) -->\s*<g", part) or re.findall(r"<text[^>]*>([^<]*)<", part)


async def test_exchanges_within_one_second_get_time_ticks_that_differ(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'second.db'}")
    await store.start()
    try:
        for index in range(3):
            row = exchange_row(f"r{index}", 0.1 * index, "m", "deliver", 0.5, "hi", {}, index)
            await store.record_exchange(row, None)
        report = build_report(await load_rows(store), now=T0 + 1)
    finally:
        await store.close()
    labels = tick_labels(chart(render_html(report), "volume"))
    assert len(labels) >= 3, labels
    assert len(set(labels)) == len(labels), f"repeated time ticks: {labels}"
