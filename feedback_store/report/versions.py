"""Which model ran when: promotions and rollbacks (``hitl retrain --promote``, ``hitl
models rollback``) and the learner's mode (``learner_mode`` events), from the events.

The events' data is whatever the writer stored: ``by`` is text an operator typed, and a
field may be missing or of another type in a store written by other code. Everything is
read defensively and handed on as plain values; the page escapes the text.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from feedback_store.report.metrics import iso, rounded
from feedback_store.report.rows import EventRow, LabelPoint

#: the events that make another model live
MODEL_CHANGES = ("promotion", "rollback")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return rounded(float(value))


def _auc(figures: dict[str, Any], side: str) -> float | None:
    part = figures.get(side)
    return _number(part.get("roc_auc")) if isinstance(part, dict) else None


def model_changes(labels: Sequence[LabelPoint], events: Sequence[EventRow]) -> list[dict[str, Any]]:
    """Each promotion and rollback in time order: when, which version, by whom, the
    figures that promoted it, and ``at_label``: how many of the period's labels had been
    given by then (where the model chart, drawn over labels, marks it)."""
    times = sorted(label.created_at for label in labels)
    out = []
    for event in events:
        if event.kind not in MODEL_CHANGES:
            continue
        data = event.data
        raw = data.get("figures")
        figures: dict[str, Any] = raw if isinstance(raw, dict) else {}
        out.append(
            {
                "kind": event.kind,
                "at": iso(event.created_at),
                "ts": event.created_at,
                "at_label": bisect_right(times, event.created_at),
                "version": _int(data.get("version")),
                "from_version": _int(data.get("from_version")),
                "generation": _int(data.get("generation")),
                "by": "" if data.get("by") is None else str(data.get("by")),
                "candidate_roc_auc": _auc(figures, "candidate"),
                "live_roc_auc": _auc(figures, "live"),
                "auc_difference": _number(figures.get("auc_difference")),
            }
        )
    return sorted(out, key=lambda change: change["ts"])


def learner_modes(events: Sequence[EventRow], start: float | None) -> list[dict[str, Any]]:
    """The learner's modes in time order, from the one already running at ``start`` (the
    last recorded before it) to the last one in the period."""
    modes = sorted((e for e in events if e.kind == "learner_mode"), key=lambda e: e.created_at)
    if start is not None:
        before = [e for e in modes if e.created_at < start]
        modes = before[-1:] + [e for e in modes if e.created_at >= start]
    out = []
    for event in modes:
        mode = event.data.get("mode")
        out.append(
            {
                "mode": mode if mode in ("online", "batch") else "unknown",
                "batch_every_s": _number(event.data.get("batch_every_s")),
                "since": iso(event.created_at),
                "ts": event.created_at,
            }
        )
    return out
