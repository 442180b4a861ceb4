"""Promotions, rollbacks and the learner's mode in the report: a real SQLite store where a
learner learns, a retrain is promoted by someone whose name is markup, the model is rolled
back and the learner switches to batch mode; the HTML, its SVG and the JSON say so, and
the name reads literally, in the page and in a real browser."""

from __future__ import annotations

import asyncio
import html
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from feedback_store import Store
from feedback_store.report import EventRow, LabelPoint, learner_modes, model_changes
from feedback_store.report.rows import load_rows
from middleware.cli.main import main
from middleware.learning.brain import Brain
from middleware.learning.learner import Learner
from middleware.learning.retrain import RetrainPlan, promote, retrain, rollback
from middleware.reporting.versions import change_title
from middleware.scoring.features import ExchangeView, without_text
from middleware.scoring.features import features as features_of
from tests.reporting.conftest import ARTIFACTS
from tests.support.builders import exchange_row

HOSTILE = '<script>alert("by")</script>'
PLAN = RetrainPlan(model="logreg-adagrad", rolling_window=50, holdout=0.25, passes=2,
                   shuffle=True, seed=1, resamples=100, budget=0.2, prior=0.5)  # fmt: skip


async def add_labels(store: Store, n: int, start: int, *, skill: float) -> None:
    """``n`` voted replies whose stored confidence tells helpful from not by ``skill``."""
    rng = random.Random(start)
    for i in range(start, start + n):
        bad = rng.random() < 0.5
        word = "refund" if bad else "hours"
        features = without_text(features_of(ExchangeView(question=word, reply="here it is")))
        confidence = min(0.99, max(0.01, 0.5 + skill * (-0.3 if bad else 0.3) + rng.gauss(0, 0.2)))
        row = exchange_row(f"r{i}", question=f"about the {word}", reply_text="here it is",
                           features_json=json.dumps(features), end_user=f"u{i}",
                           confidence=confidence)  # fmt: skip
        await store.record_exchange(row)
        await store.vote(reply_id=f"r{i}", voter=lambda user: f"user:{user}",
                         rating="down" if bad else "up", reason=None, comment=None,
                         correction=None, weight=1.0)  # fmt: skip


async def story(db: Path) -> None:
    """Online learning, a promotion by ``HOSTILE``, a rollback by bo, then batch mode."""
    store = Store(f"sqlite:///{db}")
    await store.start()
    try:
        await add_labels(store, 80, 0, skill=0.2)
        learner = Learner(store, Brain(), lead_check_s=0.0)
        assert await learner.begin() == 80  # records "online"
        await promote(store, await retrain(store, PLAN), by=HOSTILE)
        await add_labels(store, 60, 80, skill=0.7)
        await learner.tick()  # adopts version 2 (keeping version 1 as it was) and learns on
        assert learner.brain.version == 2 and learner.brain.labels == 140
        await rollback(store, 1, by="bo")
        await learner.tick()
        assert learner.brain.version == 1
        await learner.close()
        await add_labels(store, 40, 140, skill=0.2)
        batch = Learner(store, Brain(), mode="batch", batch_every_s=600.0)
        await batch.begin()  # records "batch every 600 s"
        await batch.close()
    finally:
        await store.close()


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = tmp_path_factory.mktemp("versions") / "hitl.db"
    asyncio.run(story(db))
    return f"sqlite:///{db}"


def report_file(store_url: str, path: Path) -> str:
    assert main(["report", "--store", store_url, "--out", str(path)], environ={}) == 0
    return path.read_text()


def learning_svg(page: str) -> str:
    found = re.search(r'<svg[^>]*aria-label="Progressive ROC AUC.*?</svg>', page, re.S)
    assert found, "no learning chart"
    return found.group(0)


def test_the_json_report_lists_promotions_rollbacks_and_modes(
    store_url: str, tmp_path: Path
) -> None:
    report = json.loads(report_file(store_url, tmp_path / "report.json"))
    changes = report["model"]["versions"]
    assert [(c["kind"], c["version"], c["from_version"], c["by"]) for c in changes] == [
        ("promotion", 2, 1, HOSTILE),
        ("rollback", 1, 2, "bo"),
    ]
    # marked where they happened on the chart's axis: after 80 and 140 labels
    assert [c["at_label"] for c in changes] == [80, 140]
    assert changes[0]["candidate_roc_auc"] is not None and changes[0]["live_roc_auc"] is not None
    modes = report["model"]["learner_modes"]
    assert [(m["mode"], m["batch_every_s"]) for m in modes] == [
        ("online", 3600.0),
        ("batch", 600.0),
    ]
    assert modes[0]["ts"] < modes[1]["ts"] and changes[1]["ts"] < modes[1]["ts"]


def test_the_model_chart_marks_them_and_the_name_reads_literally(
    store_url: str, tmp_path: Path
) -> None:
    page = report_file(store_url, tmp_path / "report.html")
    svg = learning_svg(page)
    escaped = html.escape(HOSTILE)
    # a line and a label per change, each with its tooltip: what, which version, who
    for part in ("line", "label"):
        assert (
            f'<g id="learning-change-0-{part}"><title>promotion: promoted model version 2 '
            f"(from version 1), by {escaped}, "
        ) in svg
        assert (
            f'<g id="learning-change-1-{part}"><title>rollback: rolled back to model '
            "version 1 (from version 2), by bo, "
        ) in svg
    assert "ROC AUC" in svg.split("learning-change-0-line")[1].split("</title>")[0]
    assert ">promotion<" in svg and ">rollback<" in svg  # the legend
    assert ">v1 bo<" in svg  # the label beside the rollback's line
    assert "<script" not in page.lower()  # nowhere: not in the SVG, the table, the tooltip
    assert f"<td>{escaped}</td>" in page  # the table of changes
    modes = re.search(r'<p class="explain modes">(.*?)</p>', page)
    assert modes is not None
    assert re.fullmatch(
        r"Learner mode: online since \d+ \w+ \d{4}, \d\d:\d\d UTC; "
        r"batch every 600 s \(10\.0 min\) since \d+ \w+ \d{4}, \d\d:\d\d UTC\.",
        modes.group(1),
    )


def test_a_period_says_which_mode_was_running_when_it_began(store_url: str) -> None:
    async def modes_since() -> list[dict[str, Any]]:
        store = Store(store_url)
        await store.start()
        try:
            events = await store.events("learner_mode")
            batch_at = events[-1].created_at
            rows = await load_rows(store, since=batch_at + 1.0)
            return learner_modes(rows.events, batch_at + 1.0)
        finally:
            await store.close()

    # a period that begins after the switch: batch was running, and still is
    assert [m["mode"] for m in asyncio.run(modes_since())] == ["batch"]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (None, ["online", "batch", "online"]),
        (50.0, ["online", "batch", "online"]),
        (150.0, ["online", "batch", "online"]),
        (250.0, ["batch", "online"]),  # the one running when the period began
        (400.0, ["online"]),
    ],
)
def test_learner_modes_begin_with_the_one_running(start: float | None, expected: list[str]) -> None:
    events = [
        EventRow(100.0, "learner_mode", {"mode": "online", "batch_every_s": 3600.0}),
        EventRow(120.0, "drift", {}),
        EventRow(200.0, "learner_mode", {"mode": "batch", "batch_every_s": 60}),
        EventRow(300.0, "learner_mode", {"mode": "online", "batch_every_s": 60}),
    ]
    assert [m["mode"] for m in learner_modes(events, start)] == expected


def test_model_changes_survive_odd_event_data() -> None:
    labels = [LabelPoint(i, f"r{i}", i % 2, 0.5, float(i)) for i in range(1, 11)]
    events = [
        EventRow(5.5, "promotion", {"version": "2", "by": 7, "figures": [1]}),
        EventRow(20.0, "rollback", {}),
        EventRow(3.0, "drift", {"version": 9}),
    ]
    changes = model_changes(labels, events)
    assert [(c["kind"], c["version"], c["by"], c["at_label"]) for c in changes] == [
        ("promotion", None, "7", 5),
        ("rollback", None, "", 10),
    ]
    assert changes[0]["candidate_roc_auc"] is None


async def test_in_a_browser_the_markers_show_and_the_name_is_text(
    browser: Any, store_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "report.html"
    await asyncio.to_thread(report_file, store_url, path)
    page = await browser.new_page(viewport={"width": 1100, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await page.goto(path.as_uri())
    chart = page.locator("figure", has=page.locator('svg[aria-label^="Progressive ROC AUC"]'))
    await chart.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    await chart.screenshot(path=str(ARTIFACTS / "report-model-versions.png"))
    section = page.locator('section[aria-labelledby="model"]')
    await section.screenshot(path=str(ARTIFACTS / "report-model-section.png"))
    titles = await chart.locator("svg g[id^='learning-change-'] > title").all_text_contents()
    assert len(titles) == 4 and titles[0].startswith(
        f"promotion: promoted model version 2 (from version 1), by {HOSTILE}"
    )
    table = page.locator("table.versions")
    assert await table.locator("tbody tr").count() == 2
    assert HOSTILE in await table.inner_text()
    assert "batch every 600 s" in await page.locator("p.modes").inner_text()
    assert dialogs == []  # no script ran
    await page.close()


@pytest.mark.parametrize(
    ("kind", "figures"),
    [
        ("promotion", "; ROC AUC 0.810 against 0.740 for the model it replaced"),
        # a rollback carries its version's figures from when it was promoted
        ("rollback", "; when first promoted: ROC AUC 0.810 against 0.740 for the model it"),
    ],
)
def test_the_tooltip_says_what_the_figures_are(kind: str, figures: str) -> None:
    change = {"kind": kind, "version": 2, "from_version": None, "by": "", "at": None,
              "candidate_roc_auc": 0.81, "live_roc_auc": 0.74}  # fmt: skip
    title = change_title(change)
    assert title.startswith(f"{kind}: ") and ", by unknown, n/a" in title
    assert figures in title and "(from version" not in title
