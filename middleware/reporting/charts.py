"""The report's charts: each takes part of the report and returns inline SVG, or None
when there is nothing to draw.

Every series differs by marker, line style or hatch as well as colour, so the charts
read in greyscale and for colour-blind readers. Text drawn in a chart (topic labels,
segment names) is escaped by matplotlib's SVG writer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from middleware.reporting.figures import (
    BLUE,
    GREEN,
    GREY,
    LIGHT,
    ORANGE,
    PURPLE,
    RED,
    SQUARE,
    WIDE,
    axes,
    bucket_bars,
    change_lines,
    count_axis,
    datetimes,
    drift_lines,
    figure,
    finish_time_chart,
    legend_above,
    time_axis,
    time_span,
    to_svg,
    with_titles,
)
from middleware.reporting.format import num, short
from middleware.reporting.versions import change_label, change_title


def chart_volume(timeline: dict[str, Any]) -> str | None:
    buckets = timeline.get("buckets") or []
    if not any(b["exchanges"] for b in buckets):
        return None
    x = datetimes(b["ts"] for b in buckets)
    fig = figure(WIDE)
    ax = axes(fig)
    replayed = [b.get("replayed", 0) for b in buckets]
    if any(replayed):
        live = [b["exchanges"] - r for b, r in zip(buckets, replayed, strict=True)]
        bars = bucket_bars(ax, timeline, "", values=live, hatch="///", label="live exchanges")
        extra = [
            bucket_bars(
                ax,
                timeline,
                "",
                values=replayed,
                bottom=live,
                hatch="...",
                label="replayed (hitl replay)",
            )
        ]
    else:
        bars = bucket_bars(ax, timeline, "exchanges", hatch="///", label="exchanges")
        extra = []
    ax.set_ylabel("exchanges", fontsize=9)
    count_axis(ax.yaxis)
    time_axis(ax)
    time_span(ax, timeline)
    rate = ax.twinx()
    rate.spines[["top"]].set_visible(False)
    rate.tick_params(labelsize=9)
    handles = (
        [bars, *extra] if any(b["exchanges"] > b.get("replayed", 0) for b in buckets) else extra
    )
    if any(b["helpful_rate"] is not None for b in buckets):
        # A bucket without votes breaks the line (NaN): no slope drawn across a gap.
        mid = [xi.timestamp() + timeline["bucket_seconds"] / 2 for xi in x]
        rates = [math.nan if b["helpful_rate"] is None else b["helpful_rate"] for b in buckets]
        (line,) = rate.plot(
            datetimes(mid),
            rates,
            color=BLUE,
            marker="o",
            markersize=4,
            linestyle="-",
            linewidth=1.8,
            label="helpful rate (thumbs up / votes)",
        )
        handles.append(line)
    rate.set_ylim(0, 1.05)
    rate.set_ylabel("helpful rate", fontsize=9)
    return finish_time_chart(fig, ax, handles, timeline, "volume")


def chart_learning(model: dict[str, Any]) -> str | None:
    curve = [p for p in model.get("learning_curve", []) if p["roc_auc"] is not None]
    if not curve:
        return None
    fig = figure(WIDE)
    ax = axes(fig)
    n = [p["labels"] for p in curve]
    every = max(1, len(curve) // 12)
    handles = ax.plot(
        n,
        [p["roc_auc"] for p in curve],
        color=BLUE,
        linestyle="-",
        linewidth=2,
        marker="o",
        markersize=4,
        markevery=every,
        label="cumulative",
    )
    rolling = [
        (p["labels"], p["rolling_roc_auc"]) for p in curve if p["rolling_roc_auc"] is not None
    ]
    if rolling:
        handles += ax.plot(
            [a for a, _ in rolling],
            [b for _, b in rolling],
            color=ORANGE,
            linestyle="--",
            linewidth=1.6,
            marker="s",
            markersize=4,
            markevery=every,
            label=f"last {model.get('rolling_window', 200)} labels",
        )
    handles.append(ax.axhline(0.5, color=GREY, linestyle=":", linewidth=1.2, label="chance (0.5)"))
    # Drift is timed; place each one at the label count reached by then.
    stamps = [(p["labels"], p["ts"]) for p in model.get("learning_curve", [])]
    marks = []
    for drift in model.get("drifts", []):
        reached = [count for count, ts in stamps if ts <= drift["ts"]]
        if reached:
            marks.append(float(reached[-1]))
    handles += drift_lines(ax, marks, as_dates=False)
    # Promotions and rollbacks at the label count reached when they went live.
    changes = model.get("versions", [])
    drawn = [{**c, "x": float(c["at_label"]), "text": change_label(c)} for c in changes]
    handles += change_lines(ax, drawn)
    ax.set_ylim(0.0, 1.0)
    count_axis(ax.xaxis, top=max(n))
    ax.set_xlabel("labels learned", fontsize=9)
    ax.set_ylabel("ROC AUC", fontsize=9)
    # Above the plot: inside, at any corner, it would hide the curve's start or end.
    legend_above(fig, handles)
    return with_titles(to_svg(fig, "learning"), "learning", [change_title(c) for c in changes])


def chart_calibration(model: dict[str, Any]) -> str | None:
    points = model.get("calibration") or []
    if not points:
        return None
    fig = figure(SQUARE)
    ax = axes(fig)
    counts = ax.twinx()
    counts.bar(
        [(p["bin_low"] + p["bin_high"]) / 2 for p in points],
        [p["count"] for p in points],
        width=0.09,
        color="#f2f4f7",
        edgecolor="#d5dbe1",
        linewidth=0.6,
    )
    count_axis(counts.yaxis)
    counts.set_ylabel("labels in bin", fontsize=8.5, color=GREY)
    counts.tick_params(labelsize=8, colors=GREY)
    counts.spines[["top"]].set_visible(False)
    ax.set_zorder(counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    handles = ax.plot([0, 1], [0, 1], color=GREY, linestyle=":", label="perfectly calibrated")
    handles += ax.plot(
        [p["mean_confidence"] for p in points],
        [p["helpful_fraction"] for p in points],
        color=BLUE,
        marker="o",
        linestyle="-",
        linewidth=1.8,
        label="the model",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(helpful)", fontsize=9)
    ax.set_ylabel("observed helpful fraction", fontsize=9)
    fig.legend(handles=handles, loc="outside upper left", fontsize=8.5, frameon=False, ncols=2)
    return to_svg(fig, "calibration")


def chart_confidence(model: dict[str, Any]) -> str | None:
    outcome = model.get("confidence_by_outcome") or {}
    if not outcome or not (outcome["helpful"]["count"] or outcome["unhelpful"]["count"]):
        return None
    fig = figure(SQUARE)
    ax = axes(fig)
    edges = outcome["bin_edges"]
    handles = []
    for key, color, hatch, style in (
        ("helpful", GREEN, "///", "-"),
        ("unhelpful", RED, "\\\\\\", "--"),
    ):
        item = outcome[key]
        handles.append(
            ax.stairs(
                item["histogram"],
                edges,
                fill=True,
                facecolor="none",
                edgecolor=color,
                hatch=hatch,
                linestyle=style,
                linewidth=1.6,
                label=f"{key} ({item['count']}, mean {num(item['mean_confidence'], 2)})",
            )
        )
    ax.set_xlim(0, 1)
    count_axis(ax.yaxis)
    ax.set_xlabel("confidence at reply time", fontsize=9)
    ax.set_ylabel("labels", fontsize=9)
    fig.legend(handles=handles, loc="outside upper left", fontsize=8.5, frameon=False)
    return to_svg(fig, "confidence")


def chart_reviews(timeline: dict[str, Any]) -> str | None:
    buckets = timeline.get("buckets") or []
    if not any(b["escalated"] or b["backlog"] or b["decided"] for b in buckets):
        return None
    fig = figure(WIDE)
    ax = axes(fig)
    width = timeline["bucket_seconds"]
    handles = [bucket_bars(ax, timeline, "escalated", hatch="xxx", label="escalated")]
    # Decided inside its bucket's bar, half as wide: of that bucket's escalations, how
    # many a person has decided (whenever they did).
    handles.append(
        ax.bar(
            datetimes(b["ts"] + width / 4 for b in buckets),
            [b["decided"] for b in buckets],
            width=width / 2 / 86400.0,
            align="edge",
            color="white",
            edgecolor=GREEN,
            hatch="...",
            linewidth=0.9,
            label="of them decided",
        )
    )
    # Each bucket's step is level with what still waited at its end; the last step is
    # drawn to the last bucket's end, not left as a bare rise at the chart's edge.
    backlog = [b["backlog"] for b in buckets]
    steps = datetimes([*(b["ts"] for b in buckets), buckets[-1]["ts"] + width])
    handles += ax.plot(
        steps,
        [*backlog, backlog[-1]],
        color=PURPLE,
        drawstyle="steps-post",
        linestyle="-",
        linewidth=1.8,
        label="backlog (waiting at the end)",
    )
    ax.set_ylabel("escalations", fontsize=9)
    count_axis(ax.yaxis)
    time_axis(ax)
    time_span(ax, timeline)
    return finish_time_chart(fig, ax, handles, timeline, "reviews")


def chart_review_time(timeline: dict[str, Any]) -> str | None:
    points = [
        (b["ts"] + timeline["bucket_seconds"] / 2, b["median_seconds_to_decision"])
        for b in timeline.get("buckets") or []
        if b["median_seconds_to_decision"] is not None
    ]
    if not points:
        return None
    fig = figure(WIDE)
    ax = axes(fig)
    # Seconds when every median is under two minutes: "0.02 minutes" reads as nothing.
    unit, per = ("seconds", 1.0) if max(s for _, s in points) < 120 else ("minutes", 60.0)
    values = [s / per for _, s in points]
    handles = ax.plot(
        datetimes(t for t, _ in points),
        values,
        color=BLUE,
        linestyle="-.",
        linewidth=1.6,
        marker="D",
        markersize=4,
        label=f"median {unit} to decision",
    )
    ax.set_ylim(0, max(max(values) * 1.15, 1.0))
    ax.set_ylabel(unit, fontsize=9)
    time_axis(ax)
    time_span(ax, timeline)
    return finish_time_chart(fig, ax, handles, timeline, "review-time")


def chart_topics(topics: Sequence[dict[str, Any]]) -> str | None:
    shown = list(topics[:8])
    if not shown:
        return None
    fig = figure((8.0, 0.45 * len(shown) + 0.9))
    ax = axes(fig)
    ax.grid(True, axis="x", color="#e5e5e5")
    ax.grid(False, axis="y")
    labels = [short(t["label"], 48) for t in shown][::-1]
    ax.barh(
        labels,
        [t["count"] for t in shown][::-1],
        color=LIGHT,
        edgecolor=RED,
        hatch="\\\\\\",
        linewidth=0.8,
        height=0.6,
    )
    count_axis(ax.xaxis)
    ax.set_xlabel("complaints (thumbs-down, rejected or corrected)", fontsize=9)
    return to_svg(fig, "topics")


def chart_segments(segments: Sequence[dict[str, Any]]) -> str | None:
    shown = [s for s in segments if s["exchanges"]][:14]
    if not shown:
        return None
    import numpy as np

    fig = figure((8.0, 0.5 * len(shown) + 1.1))
    ax = axes(fig)
    ax.grid(True, axis="x", color="#e5e5e5")
    ax.grid(False, axis="y")
    y = np.arange(len(shown))[::-1]
    helpful = [s["helpful_rate"] or 0.0 for s in shown]
    escalated = [s["escalated_rate"] or 0.0 for s in shown]
    bars = ax.barh(
        y + 0.2,
        helpful,
        height=0.38,
        color="white",
        edgecolor=BLUE,
        hatch="///",
        linewidth=0.9,
        label="helpful rate",
    )
    esc = ax.barh(
        y - 0.2,
        escalated,
        height=0.38,
        color="white",
        edgecolor=ORANGE,
        hatch="---",
        linewidth=0.9,
        label="escalated rate",
    )
    for yi, s in zip(y, shown, strict=True):
        if s["helpful_rate"] is None:
            ax.text(0.01, yi + 0.2, "no votes", va="center", fontsize=7.5, color=GREY)
    ax.set_yticks(y, [short(f"{s['segment']} ({s['exchanges']})", 40) for s in shown])
    ax.set_xlim(0, 1)
    ax.set_xlabel("rate", fontsize=9)
    legend_above(fig, [bars, esc])
    return to_svg(fig, "segments")
