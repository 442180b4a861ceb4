"""Both tiers in the report: the deeper look's rolling figures, saved with its snapshot
in a real SQLite store, read by the report and rendered (escaped) on the page."""

from __future__ import annotations

import json

import pytest

from feedback_store import Store
from feedback_store.report import DEEP_FIGURES_KEY, build_report, load_rows
from middleware.flows.deep import DeepFlow
from middleware.learning.deep import DeepModel
from middleware.learning.deep.figures import caught, tier_figures
from middleware.reporting import render_html
from middleware.scoring.policy import ReviewBudget, Thresholds
from tests.deep.test_look import WordEmbedder


def test_caught_counts_the_thumbs_down_among_the_lowest_scores() -> None:
    ys = [False, True, False, True, True]
    assert caught(ys, [0.1, 0.2, 0.9, 0.8, 0.7], 0.2) == 0.5  # the lowest one of five
    assert caught(ys, [0.1, 0.9, 0.2, 0.8, 0.7], 0.4) == 1.0
    assert caught([True, True], [0.1, 0.2], 0.5) is None  # no thumbs-down to catch
    figures = tier_figures([(False, 0.1, 0.9), (True, 0.9, 0.1)], 0.5)
    assert figures["deep"] == {"roc_auc": 1.0, "caught_at_budget": 1.0}
    assert figures["live"] == {"roc_auc": 0.0, "caught_at_budget": 0.0}
    assert tier_figures([], 0.2)["deep"] == {"roc_auc": None, "caught_at_budget": None}


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    """These tests run on SQLite only."""
    return sqlite_store


async def test_the_report_shows_both_tiers_from_the_snapshot(store: Store) -> None:
    rows = await load_rows(store)
    assert rows.deep is None and "Both tiers" not in render_html(build_report(rows))
    deep = DeepFlow(
        embedder=WordEmbedder(),
        model=DeepModel(ring_size=100, neighbours=5),
        queue_size=8,
        store=store,
        budget=ReviewBudget(share=0.2, per_hour=None),
        thresholds=Thresholds(escalate_below=0.3, hold_below=0.2),
        learned_up_to=lambda: 0,
        review_queued=lambda: None,
        wait_s=1.0,
        clock=lambda: 1000.0,
    )
    for i in range(300):
        helpful = i % 2 == 0
        text = "it arrives monday" if helpful else "sorry i do not know"
        # the live model cannot tell them apart (0.5); the deeper look learns to
        assert await deep.look.learn(f"l{i}", "q", text, 0.5, helpful, 1.0)
    await deep.snapshot()

    report = build_report(await load_rows(store))
    figures = report["model"]["deep"]
    assert figures["labels"] == 300 and figures["budget"] == 0.2 and figures["at"] == 1000.0
    assert figures["live"]["roc_auc"] == 0.5
    assert figures["deep"]["roc_auc"] > 0.9 and figures["deep"]["caught_at_budget"] > 0.35
    page = render_html(report)
    assert "Both tiers on the last 300 labels" in page and "20.0% review budget" in page
    assert f"<td>{figures['deep']['roc_auc']:.3f}</td>" in page
    assert "<td>0.500</td>" in page  # the live model's

    # what the store holds is shown as literal text
    await store.put_value(
        DEEP_FIGURES_KEY,
        json.dumps({"labels": "<b>x</b>", "budget": 0.2, "deep": {}, "live": {}}),
    )
    page = render_html(build_report(await load_rows(store)))
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
