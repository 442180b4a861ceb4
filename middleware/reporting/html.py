"""The report for people: one self-contained HTML file with inline SVG charts.

Charts are drawn with matplotlib's object API (``Figure``, the Agg/SVG canvases; never
pyplot, whose global state is unsafe off the main thread) and inlined, so the file
opens offline and loads nothing. Every series differs by marker, line style or hatch
as well as colour, so the charts read in greyscale and for colour-blind readers.
Rendering is CPU work: callers on an event loop run it in a thread.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from feedback_store.report import CSV_COLUMNS

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
BLUE = "#0072B2"
ORANGE = "#E69F00"
GREEN = "#009E73"
RED = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#555555"
LIGHT = "#dfe6ee"
INK = "#1f2933"
WIDE = (8.0, 3.0)
SQUARE = (4.6, 3.6)


# -- SVG plumbing --------------------------------------------------------------------------


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=96, layout="constrained")
    fig.patch.set_facecolor("white")
    return fig


def _axes(fig: Any) -> Any:
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9, colors=INK)
    return ax


def to_svg(fig: Any, prefix: str) -> str:
    """The figure as an inline ``<svg>``: no prolog, no metadata, ids made unique per chart."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    # Several charts share one page: prefix ids so one chart's defs never serve another.
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r'xlink:href="#([^"]+)"', rf'xlink:href="#{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    svg = re.sub(
        r'<svg([^>]*?) width="[^"]+" height="[^"]+"',
        r'<svg\1 class="chart" role="img" preserveAspectRatio="xMidYMid meet"',
        svg,
        count=1,
    )
    return svg


def _dates(timestamps: Iterable[float]) -> list[datetime]:
    return [datetime.fromtimestamp(ts, UTC) for ts in timestamps]


def _time_axis(ax: Any) -> None:
    from matplotlib import dates

    locator = dates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))


def _drift_lines(ax: Any, drift: Sequence[float], *, as_dates: bool = True) -> list[Any]:
    handles = []
    for i, at in enumerate(drift):
        x = datetime.fromtimestamp(at, UTC) if as_dates else at
        line = ax.axvline(
            x, color=RED, linestyle=(0, (5, 3)), linewidth=1.4, label="drift" if i == 0 else None
        )
        handles.append(line)
    return handles[:1]


def _legend(ax: Any, handles: list[Any], **kwargs: Any) -> None:
    if handles:
        ax.legend(handles=handles, fontsize=8.5, frameon=False, **kwargs)


def _legend_above(fig: Any, handles: list[Any]) -> None:
    """Above the plot, so it never hides a bar (time charts fill their whole width)."""
    if handles:
        fig.legend(
            handles=handles,
            loc="outside upper left",
            ncols=len(handles),
            fontsize=8.5,
            frameon=False,
        )


# -- charts (each returns SVG, or None when there is nothing to draw) ------------------------


def chart_volume(timeline: dict[str, Any]) -> str | None:
    buckets = timeline.get("buckets") or []
    if not any(b["exchanges"] for b in buckets):
        return None
    width = timeline["bucket_seconds"] / 86400.0
    x = _dates(b["ts"] for b in buckets)
    fig = _figure(WIDE)
    ax = _axes(fig)
    bars = ax.bar(
        x,
        [b["exchanges"] for b in buckets],
        width=width,
        align="edge",
        color=LIGHT,
        edgecolor=GREY,
        hatch="///",
        linewidth=0.6,
        label="exchanges",
    )
    ax.set_ylabel("exchanges", fontsize=9)
    _time_axis(ax)
    rate = ax.twinx()
    rate.spines[["top"]].set_visible(False)
    rate.tick_params(labelsize=9)
    voted = [
        (xi, b["helpful_rate"])
        for xi, b in zip(x, buckets, strict=True)
        if b["helpful_rate"] is not None
    ]
    handles = [bars]
    if voted:
        mid = [xi.timestamp() + timeline["bucket_seconds"] / 2 for xi, _ in voted]
        (line,) = rate.plot(
            _dates(mid),
            [r for _, r in voted],
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
    handles += _drift_lines(ax, timeline.get("drift", []))
    _legend_above(fig, handles)
    return to_svg(fig, "volume")


def chart_learning(model: dict[str, Any]) -> str | None:
    curve = [p for p in model.get("learning_curve", []) if p["roc_auc"] is not None]
    if not curve:
        return None
    fig = _figure(WIDE)
    ax = _axes(fig)
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
    handles += _drift_lines(ax, marks, as_dates=False)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("labels learned", fontsize=9)
    ax.set_ylabel("ROC AUC", fontsize=9)
    _legend(ax, handles, loc="lower right", ncols=2)
    return to_svg(fig, "learning")


def chart_calibration(model: dict[str, Any]) -> str | None:
    points = model.get("calibration") or []
    if not points:
        return None
    fig = _figure(SQUARE)
    ax = _axes(fig)
    counts = ax.twinx()
    counts.bar(
        [(p["bin_low"] + p["bin_high"]) / 2 for p in points],
        [p["count"] for p in points],
        width=0.09,
        color="#f2f4f7",
        edgecolor="#d5dbe1",
        linewidth=0.6,
    )
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
    fig = _figure(SQUARE)
    ax = _axes(fig)
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
                label=f"{key} ({item['count']}, mean {_num(item['mean_confidence'], 2)})",
            )
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence at reply time", fontsize=9)
    ax.set_ylabel("labels", fontsize=9)
    fig.legend(handles=handles, loc="outside upper left", fontsize=8.5, frameon=False)
    return to_svg(fig, "confidence")


def chart_reviews(timeline: dict[str, Any]) -> str | None:
    buckets = timeline.get("buckets") or []
    if not any(b["escalated"] or b["backlog"] or b["decided"] for b in buckets):
        return None
    width = timeline["bucket_seconds"] / 86400.0
    x = _dates(b["ts"] for b in buckets)
    fig = _figure(WIDE)
    ax = _axes(fig)
    handles = [
        ax.bar(
            x,
            [b["escalated"] for b in buckets],
            width=width,
            align="edge",
            color=LIGHT,
            edgecolor=GREY,
            hatch="xxx",
            linewidth=0.6,
            label="escalated",
        )
    ]
    ends = _dates(b["ts"] + timeline["bucket_seconds"] for b in buckets)
    handles += ax.plot(
        ends,
        [b["backlog"] for b in buckets],
        color=PURPLE,
        drawstyle="steps-post",
        linestyle="-",
        linewidth=1.8,
        marker="s",
        markersize=3.5,
        label="backlog (waiting)",
    )
    handles += ax.plot(
        ends,
        [b["decided"] for b in buckets],
        color=GREEN,
        linestyle="--",
        linewidth=1.4,
        marker="^",
        markersize=4,
        label="decided",
    )
    ax.set_ylabel("escalations", fontsize=9)
    _time_axis(ax)
    handles += _drift_lines(ax, timeline.get("drift", []))
    _legend_above(fig, handles)
    return to_svg(fig, "reviews")


def chart_review_time(timeline: dict[str, Any]) -> str | None:
    points = [
        (b["ts"] + timeline["bucket_seconds"] / 2, b["median_seconds_to_decision"])
        for b in timeline.get("buckets") or []
        if b["median_seconds_to_decision"] is not None
    ]
    if not points:
        return None
    fig = _figure(WIDE)
    ax = _axes(fig)
    minutes = [s / 60.0 for _, s in points]
    handles = ax.plot(
        _dates(t for t, _ in points),
        minutes,
        color=BLUE,
        linestyle="-.",
        linewidth=1.6,
        marker="D",
        markersize=4,
        label="median minutes to decision",
    )
    ax.set_ylim(bottom=0)
    ax.set_ylabel("minutes", fontsize=9)
    _time_axis(ax)
    handles += _drift_lines(ax, timeline.get("drift", []))
    _legend_above(fig, handles)
    return to_svg(fig, "review-time")


def chart_topics(topics: Sequence[dict[str, Any]]) -> str | None:
    shown = list(topics[:8])
    if not shown:
        return None
    fig = _figure((8.0, 0.45 * len(shown) + 0.9))
    ax = _axes(fig)
    ax.grid(True, axis="x", color="#e5e5e5")
    ax.grid(False, axis="y")
    labels = [_short(t["label"], 48) for t in shown][::-1]
    ax.barh(
        labels,
        [t["count"] for t in shown][::-1],
        color=LIGHT,
        edgecolor=RED,
        hatch="\\\\\\",
        linewidth=0.8,
        height=0.6,
    )
    ax.set_xlabel("complaints (thumbs-down, rejected or corrected)", fontsize=9)
    return to_svg(fig, "topics")


def chart_segments(segments: Sequence[dict[str, Any]]) -> str | None:
    shown = [s for s in segments if s["exchanges"]][:14]
    if not shown:
        return None
    import numpy as np

    fig = _figure((8.0, 0.5 * len(shown) + 1.1))
    ax = _axes(fig)
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
    ax.set_yticks(y, [_short(f"{s['segment']} ({s['exchanges']})", 40) for s in shown])
    ax.set_xlim(0, 1)
    ax.set_xlabel("rate", fontsize=9)
    _legend(ax, [bars, esc], loc="lower right")
    return to_svg(fig, "segments")


# -- the page -------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def learning_verdict(model: dict[str, Any]) -> str:
    """One sentence: is the model learning?"""
    curve = [p for p in model.get("learning_curve", []) if p["rolling_roc_auc"] is not None]
    labels = model.get("labels", 0)
    if labels < 20 or len(curve) < 2:
        return f"Too early to tell: {labels} labels so far."
    first, last = curve[0]["rolling_roc_auc"], curve[-1]["rolling_roc_auc"]
    if last >= 0.6 and last >= first + 0.02:
        return f"Yes: recent ROC AUC {last:.2f}, up from {first:.2f} on the first labels."
    if last >= 0.6:
        return f"Better than chance (recent ROC AUC {last:.2f}), not improving lately."
    if last > 0.52:
        return f"Barely: recent ROC AUC {last:.2f} is close to chance (0.5)."
    return f"No: recent ROC AUC {last:.2f} is no better than chance."


def _card(title: str, value: str, note: str = "") -> str:
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    return (
        f'<div class="card"><h3>{_e(title)}</h3><p class="value">{_e(value)}</p>{note_html}</div>'
    )


def _figure_html(svg: str | None, caption: str, empty: str) -> str:
    if svg is None:
        return (
            f'<figure class="empty"><figcaption>{_e(caption)}</figcaption>'
            f"<p>{_e(empty)}</p></figure>"
        )
    # The caption names the chart for screen readers too.
    svg = svg.replace('role="img"', f'role="img" aria-label="{_e(caption)}"', 1)
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str) -> str:
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _glance(report: dict[str, Any]) -> str:
    fb, reviews, model, decisions = (
        report["feedback"],
        report["reviews"],
        report["model"],
        report["decisions"],
    )
    total = report["exchanges"]
    reviewed = decisions.get("escalate", 0) + decisions.get("hold", 0)
    cards = [
        _card("Exchanges", f"{total:,}", f"{decisions.get('ask', 0):,} asked for a vote"),
        _card("Helpful rate", _pct(fb["helpful_rate"]), f"{fb['up']:,} up · {fb['down']:,} down"),
        _card(
            "Sent to people",
            f"{reviewed:,}",
            f"{_pct(reviewed / total if total else None)} of exchanges · {reviews['holds']} held",
        ),
        _card(
            "Reviews",
            f"{reviews['decided']:,} decided",
            f"{reviews['pending']} waiting · {reviews['dead_letter']} dead letters",
        ),
        _card(
            "Time to decision",
            _duration(reviews["median_seconds_to_decision"]),
            f"median · p90 {_duration(reviews['p90_seconds_to_decision'])}",
        ),
        _card(
            "Model ROC AUC",
            _num(model["roc_auc"]),
            f"recent {_num(model['rolling_roc_auc'])} · {model['labels']:,} labels",
        ),
        _card("Drift events", str(model["drift_events"]), "marked on the time charts"),
        _card(
            "Reviewer agreement",
            _num(reviews["agreement"], 2),
            f"Cohen's kappa · {reviews['items_with_several_reviewers']} items with 2+ reviewers",
        ),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


STYLE = """
:root { color-scheme: light; --ink: #1f2933; --muted: #52606d; --line: #d9e2ec; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: #f5f7fa; }
header, main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.25rem; }
header { padding-top: 2rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 2px solid var(--line); }
h3 { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; margin: 0;
     color: var(--muted); }
.period { color: var(--muted); margin: 0; }
.verdict { font-size: 1.05rem; background: #fff; border-left: 4px solid #0072B2;
           padding: .6rem .9rem; margin: 1rem 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(12.5rem, 1fr));
         gap: .75rem; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .75rem; }
.card .value { font-size: 1.5rem; font-weight: 650; margin: .15rem 0; }
.card .note { color: var(--muted); font-size: .85rem; margin: 0; }
figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: .75rem 0;
         padding: .75rem; }
figure.empty p { color: var(--muted); margin: .25rem 0 0; }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .25rem; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: .75rem; }
.pair figure { margin: 0; }
svg.chart { width: 100%; height: auto; display: block; }
table { width: 100%; border-collapse: collapse; background: #fff; margin: .75rem 0;
        font-size: .9rem; }
caption { text-align: left; color: var(--muted); padding: .25rem 0; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: #eef2f6; }
td ul { margin: 0; padding-left: 1.1rem; }
p.explain { color: var(--muted); margin: .25rem 0; }
footer { max-width: 60rem; margin: 2rem auto; padding: 0 1.25rem; color: var(--muted);
         font-size: .85rem; }
"""


def render_html(
    report: dict[str, Any],
    *,
    title: str = "hitl-gateway feedback report",
    progress: Callable[[str], None] | None = None,
) -> str:
    step = progress or (lambda _name: None)
    model, timeline, reviews = report["model"], report["timeline"], report["reviews"]
    period = report["period"]
    step("charts")
    volume = _figure_html(
        chart_volume(timeline),
        "Volume (hatched bars) and helpful rate (line, right axis) over time; dashed "
        "vertical lines mark detected drift.",
        "No exchanges in this period.",
    )
    learning = _figure_html(
        chart_learning(model),
        "Progressive ROC AUC: each label scored against the prediction made at reply "
        "time, before the model learned it. Above the dotted chance line and rising: it learns.",
        "No labels yet: the model has nothing to be judged on.",
    )
    calibration = _figure_html(
        chart_calibration(model),
        "Reliability diagram: predicted P(helpful) against the observed helpful share "
        "per bin (grey bars, right axis: labels per bin).",
        "No labels yet.",
    )
    confidence = _figure_html(
        chart_confidence(model),
        "Confidence at reply time by outcome: the further apart, the better the model "
        "separates helpful from unhelpful replies.",
        "No labels yet.",
    )
    escalations = _figure_html(
        chart_reviews(timeline),
        "Escalations per period (bars), reviews decided (dashed) and the backlog still "
        "waiting at the end of each period (steps).",
        "No escalations in this period.",
    )
    review_time = _figure_html(
        chart_review_time(timeline),
        "Median reviewer time to decision, by when the decision was made.",
        "No reviewer decisions in this period.",
    )
    topics_chart = _figure_html(
        chart_topics(report["topics"]),
        "What users complain about: questions behind thumbs-down, rejected and corrected "
        "replies, clustered (TF-IDF and NMF) and named by their top terms.",
        "No complaints in this period.",
    )
    segments_chart = _figure_html(
        chart_segments(report["segments"]),
        "Helpful rate (///) and escalated rate (---) per segment: a group far from the "
        "others points at a bias in the model, the reviewers or the chat model.",
        "No segments.",
    )
    step("tables")
    topic_rows = [
        (
            _e(t["label"]),
            str(t["count"]),
            _e(", ".join(f"{k} {v}" for k, v in t["reasons"].items())),
            "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in t["examples"]) + "</ul>",
        )
        for t in report["topics"]
    ]
    segment_rows = [
        (
            _e(s["segment"]),
            f"{s['exchanges']:,}",
            f"{s['votes']:,}",
            _pct(s["helpful_rate"]),
            _pct(s["escalated_rate"]),
            _pct(s["review_rejected_rate"]),
            _num(s["mean_confidence"], 2),
        )
        for s in report["segments"]
    ]
    reviewer_rows = [
        (
            _e(r["reviewer"]),
            str(r["decided"]),
            str(r["approved"]),
            str(r["rejected"]),
            str(r["corrected"]),
            _duration(r["median_seconds_to_decision"]),
        )
        for r in reviews["by_reviewer"]
    ]
    drift_rows = [
        (_e(d["at"]), _e(", ".join(f"{k}={v}" for k, v in d.items() if k not in ("at", "ts"))))
        for d in model["drifts"]
    ]
    reasons = ", ".join(f"{k} {v}" for k, v in report["feedback"]["by_reason"].items()) or "none"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing to fetch: the file must open offline and never phone home.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="period">{_e(period["from"] or "n/a")} to {_e(period["until"] or "n/a")}'
        f" · generated {_e(report.get('generated_at') or '')}</p></header>",
        "<main>",
        '<p class="verdict"><strong>Is the model learning?</strong> '
        f"{_e(learning_verdict(model))}</p>",
        '<section aria-labelledby="glance"><h2 id="glance">At a glance</h2>',
        _glance(report),
        "</section>",
        '<section aria-labelledby="volume"><h2 id="volume">Volume and helpfulness</h2>',
        volume,
        f'<p class="explain">Thumbs-down reasons: {_e(reasons)}.</p>',
        "</section>",
        '<section aria-labelledby="model"><h2 id="model">Is the model learning?</h2>',
        learning,
        f'<div class="pair">{calibration}{confidence}</div>',
        f'<p class="explain">Log loss {_num(model["log_loss"])} · accuracy at 0.5 '
        f"{_pct(model['accuracy'])} · Brier score {_num(model['brier'])}.</p>",
        _table(("when", "details"), drift_rows, "Detected drift")
        if drift_rows
        else '<p class="explain">No drift detected in this period.</p>',
        "</section>",
        '<section aria-labelledby="reviews"><h2 id="reviews">Do the reviewers keep up?</h2>',
        escalations,
        review_time,
        _table(
            ("reviewer", "decided", "approved", "rejected", "corrected", "median time"),
            reviewer_rows,
            "Decisions by reviewer",
        )
        if reviewer_rows
        else '<p class="explain">No reviewer decisions yet.</p>',
        "</section>",
        '<section aria-labelledby="topics"><h2 id="topics">Where are users unhappy?</h2>',
        topics_chart,
        _table(
            ("topic", "complaints", "reasons", "example questions"),
            topic_rows,
            "Top complaint topics",
        )
        if topic_rows
        else "",
        "</section>",
        '<section aria-labelledby="segments"><h2 id="segments">Segments</h2>',
        segments_chart,
        _table(
            (
                "segment",
                "exchanges",
                "votes",
                "helpful",
                "escalated",
                "rejected by reviewers",
                "mean confidence",
            ),
            segment_rows,
            "Rates per model, route and request metadata",
        )
        if segment_rows
        else "",
        "</section></main>",
        "<footer>hitl-gateway · the same figures as JSON: <code>hitl report --format json</code>"
        " or <code>GET /report.json</code></footer>",
        "</body></html>",
    ]
    return "\n".join(parts)


def render_csv(table: Sequence[dict[str, Any]]) -> str:
    """One row per exchange, columns ``CSV_COLUMNS``; empty cells for unknown values."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return out.getvalue()
