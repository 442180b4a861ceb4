"""Which model ran when, as the report says it: the words of a promotion or rollback
(on the model chart and in its table) and the learner's modes in one line.

``by`` is text an operator typed: here it is only put into words; whoever writes it into
HTML or SVG escapes it (``page._e``, ``figures.with_titles``, matplotlib's SVG text).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from middleware.reporting.format import duration, num, short, when

VERBS = {"promotion": "promoted", "rollback": "rolled back to"}


def _version(change: dict[str, Any]) -> str:
    return "?" if change.get("version") is None else str(change["version"])


def change_label(change: dict[str, Any]) -> str:
    """What the chart writes beside the line: ``v2 ana`` (the name cut short)."""
    by = short(change.get("by") or "", 16)
    return f"v{_version(change)} {by}".strip()


def _figures(change: dict[str, Any]) -> str:
    mine, live = change.get("candidate_roc_auc"), change.get("live_roc_auc")
    if mine is None or live is None:
        return ""
    said = f"ROC AUC {num(mine)} against {num(live)} for the model it replaced"
    # A rollback carries the figures its version was promoted with, not new ones.
    return said if change["kind"] == "promotion" else f"when first promoted: {said}"


def change_title(change: dict[str, Any]) -> str:
    """The tooltip: what happened, to which version, by whom, when, with what figures."""
    verb = VERBS.get(change["kind"], change["kind"])
    text = f"{change['kind']}: {verb} model version {_version(change)}"
    if change.get("from_version") is not None:
        text += f" (from version {change['from_version']})"
    text += f", by {change.get('by') or 'unknown'}, {when(change.get('at'))}"
    figures = _figures(change)
    return f"{text}; {figures}" if figures else text


def changes_table(changes: Sequence[dict[str, Any]]) -> str:
    """The promotions and rollbacks as an HTML table, every cell escaped."""

    def row(change: dict[str, Any]) -> str:
        cells = (
            when(change.get("at")),
            change["kind"],
            _version(change),
            "-" if change.get("from_version") is None else str(change["from_version"]),
            change.get("by") or "unknown",
            _figures(change) or "-",
        )
        return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"

    heads = ("when", "what", "version live", "replaced", "by", "figures")
    head = "".join(f'<th scope="col">{h}</th>' for h in heads)
    return (
        '<table class="versions"><caption>Models made live: promotions and rollbacks '
        f"(marked on the chart above)</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(row(c) for c in changes)}</tbody></table>"
    )


def _mode(mode: dict[str, Any]) -> str:
    if mode["mode"] == "batch":
        every = mode.get("batch_every_s")
        return "batch" if every is None else f"batch every {_seconds(every)}"
    return str(mode["mode"])


def _seconds(value: float) -> str:
    # The setting as written (600 s), and in words when it is long (1 h).
    exact = f"{value:g} s"
    return exact if value < 90 else f"{exact} ({duration(value)})"


def modes_line(modes: Sequence[dict[str, Any]]) -> str:
    """``online since 1 Dec 2026, 14:57 UTC; batch every 600 s since …`` (plain text)."""
    if not modes:
        return "No learner mode recorded (a learner records it when it starts)."
    said = "; ".join(f"{_mode(m)} since {when(m.get('since'))}" for m in modes)
    return f"Learner mode: {said}."
