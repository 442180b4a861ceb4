"""matplotlib plumbing for the report's charts: palette, figures, axes, inline SVG.

Only matplotlib's object API (``Figure``, the Agg/SVG canvases; never pyplot, whose
global state is unsafe off the main thread). matplotlib is imported when a chart is
drawn, never at import.
"""

from __future__ import annotations

import html
import io
import math
import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

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


def figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=96, layout="constrained")
    fig.patch.set_facecolor("white")
    return fig


def axes(fig: Any) -> Any:
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9, colors=INK)
    return ax


def printable(text: str) -> str:
    """``text`` with control and format characters (newlines, tabs, bidi overrides) as
    spaces: what a chart label may show of text someone else wrote."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


def to_svg(fig: Any, prefix: str) -> str:
    """The figure as an inline ``<svg>``: no prolog, no metadata, ids made unique per chart."""
    import matplotlib
    from matplotlib.text import Text

    # Labels may be text a client wrote (model names, metadata): never mathtext, and no
    # control characters (a tab or a direction override has no glyph and moves text).
    for text in fig.findobj(Text):
        text.set_parse_math(False)
        text.set_text(printable(text.get_text()))
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}), warnings.catch_warnings():
        # A glyph the font lacks (an emoji) is drawn as a box, not worth a warning.
        warnings.filterwarnings(
            "ignore", message="Glyph .* missing from font", category=UserWarning
        )
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


def datetimes(timestamps: Iterable[float]) -> list[datetime]:
    return [datetime.fromtimestamp(ts, UTC) for ts in timestamps]


def time_axis(ax: Any) -> None:
    from matplotlib import dates

    locator = dates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    # Ticks seconds apart (a replay, a test) read as times of day, not as bare "13, 14".
    formats = ["%Y", "%b", "%d", "%H:%M", "%H:%M", "%H:%M:%S"]
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, formats=formats))


def count_axis(axis: Any, *, top: float | None = None) -> None:
    """A count axis (``ax.yaxis`` or ``ax.xaxis``): whole-number ticks from 0, and room
    for a count of 1 when every count is 0 or one value (never 2.85 to 3.15)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=2))
    drawn = float(axis.get_data_interval()[1])  # -inf when nothing is drawn
    high = max(drawn * 1.08 if math.isfinite(drawn) else 0.0, top or 0.0, 1.0)
    if axis is axis.axes.yaxis:
        axis.axes.set_ylim(0, high)
    else:
        axis.axes.set_xlim(0, high)


#: the narrowest time axis drawn, in seconds
MIN_SPAN_S = 10.0


def time_span(ax: Any, timeline: dict[str, Any]) -> None:
    """The x axis over the timeline's buckets exactly: one bucket is a few seconds wide,
    not the days matplotlib puts around a single date."""
    buckets = timeline.get("buckets") or []
    if buckets:
        first = buckets[0]["ts"]
        last = buckets[-1]["ts"] + timeline["bucket_seconds"]
        # Under a few seconds, ticks fall between whole seconds and all read "17:44:04":
        # widen the axis around the data instead.
        pad = max(0.0, MIN_SPAN_S - (last - first)) / 2
        ax.set_xlim(*datetimes((first - pad, last + pad)))


def drift_lines(ax: Any, drift: Sequence[float], *, as_dates: bool = True) -> list[Any]:
    handles = []
    for i, at in enumerate(drift):
        x = datetime.fromtimestamp(at, UTC) if as_dates else at
        line = ax.axvline(
            x, color=RED, linestyle=(0, (5, 3)), linewidth=1.4, label="drift" if i == 0 else None
        )
        handles.append(line)
    return handles[:1]


def change_lines(ax: Any, changes: Sequence[dict[str, Any]]) -> list[Any]:
    """Promotions (solid) and rollbacks (dash-dot), each a vertical line at ``x`` with
    its version written beside it; one legend handle per kind. The line and the label
    get gids ``change-<i>-line`` and ``-label``, where ``with_titles`` hangs a tooltip."""
    handles: dict[str, Any] = {}
    for i, change in enumerate(changes):
        promotion = change["kind"] == "promotion"
        color = GREEN if promotion else PURPLE
        line = ax.axvline(
            change["x"],
            color=color,
            linestyle="-" if promotion else "-.",
            linewidth=1.8,
            label=None if change["kind"] in handles else change["kind"],
        )
        line.set_gid(f"change-{i}-line")
        handles.setdefault(change["kind"], line)
        # At the bottom, where ROC AUC rarely goes; staggered so neighbours stay legible.
        text = ax.annotate(
            change["text"],
            xy=(change["x"], 0.03 + 0.09 * (i % 3)),
            xycoords=("data", "axes fraction"),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=7.5,
            color=color,
        )
        text.set_gid(f"change-{i}-label")
    return list(handles.values())


def with_titles(svg: str, prefix: str, titles: Sequence[str]) -> str:
    """Hang ``titles[i]`` as a tooltip (SVG ``<title>``, escaped) on change ``i``'s line
    and label (their gids, as ``to_svg`` prefixed them)."""
    for i, title in enumerate(titles):
        for part in ("line", "label"):
            group = f'<g id="{prefix}-change-{i}-{part}">'
            svg = svg.replace(group, f"{group}<title>{html.escape(printable(title))}</title>", 1)
    return svg


def legend(ax: Any, handles: list[Any], **kwargs: Any) -> None:
    if handles:
        ax.legend(handles=handles, fontsize=8.5, frameon=False, **kwargs)


def legend_above(fig: Any, handles: list[Any]) -> None:
    """Above the plot, so it never hides a bar (time charts fill their whole width)."""
    if handles:
        fig.legend(
            handles=handles,
            loc="outside upper left",
            ncols=len(handles),
            fontsize=8.5,
            frameon=False,
        )


def bucket_bars(
    ax: Any,
    timeline: dict[str, Any],
    key: str,
    *,
    hatch: str,
    label: str,
    values: Sequence[float] | None = None,
    bottom: Sequence[float] | None = None,
) -> Any:
    """One hatched bar per time bucket, each as wide as its bucket, of the buckets' ``key``
    (or of ``values``, stacked on ``bottom``)."""
    buckets = timeline["buckets"]
    return ax.bar(
        datetimes(b["ts"] for b in buckets),
        [b[key] for b in buckets] if values is None else values,
        width=timeline["bucket_seconds"] / 86400.0,
        bottom=bottom,
        align="edge",
        color=LIGHT,
        edgecolor=GREY,
        hatch=hatch,
        linewidth=0.6,
        label=label,
    )


def finish_time_chart(
    fig: Any, ax: Any, handles: list[Any], timeline: dict[str, Any], prefix: str
) -> str:
    """The timeline's drift marked, the legend above the plot, the chart as SVG."""
    handles += drift_lines(ax, timeline.get("drift", []))
    legend_above(fig, handles)
    return to_svg(fig, prefix)
