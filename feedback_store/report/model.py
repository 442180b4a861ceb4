"""Is the model learning? Progressive ROC AUC, calibration, drift and model versions.

Each label is judged by the confidence stored at reply time, before the model learned
it: the report measures the model the gateway actually ran.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from feedback_store.report.metrics import iso, log_loss, rate, roc_auc, rounded
from feedback_store.report.rows import EventRow, LabelPoint
from feedback_store.report.versions import learner_modes, model_changes


def learning_curve(
    labels: Sequence[LabelPoint], *, points: int = 50, window: int = 200
) -> list[dict[str, Any]]:
    """Progressive ROC AUC as labels arrive: cumulative, and over the last ``window``.

    Each label is judged by the confidence stored at reply time, before the model
    learned it, so a rising curve means the model got better at judging new replies.
    """
    n = len(labels)
    if n == 0:
        return []
    y = [label.value for label in labels]
    p = [label.confidence for label in labels]
    step = max(1, math.ceil(n / points))
    ends = [*range(step, n, step), n]
    return [
        {
            "labels": end,
            "at": iso(labels[end - 1].created_at),
            "ts": labels[end - 1].created_at,
            "roc_auc": roc_auc(y[:end], p[:end]),
            "rolling_roc_auc": roc_auc(
                y[max(0, end - window) : end], p[max(0, end - window) : end]
            ),
        }
        for end in ends
    ]


def calibration(labels: Sequence[LabelPoint], *, bins: int = 10) -> list[dict[str, Any]]:
    """The reliability diagram's points: per confidence bin, predicted vs observed."""
    if not labels:
        return []
    y = np.asarray([label.value for label in labels], dtype=int)
    p = np.clip(np.asarray([label.confidence for label in labels], dtype=float), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The same bin assignment as sklearn.calibration.calibration_curve (strategy "uniform").
    ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(ids, minlength=bins)
    if len(set(y.tolist())) == 2:
        from sklearn.calibration import calibration_curve

        observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    else:  # calibration_curve needs both classes; the arithmetic is the same
        nonzero = counts > 0
        observed = (np.bincount(ids, weights=y, minlength=bins)[nonzero]) / counts[nonzero]
        predicted = (np.bincount(ids, weights=p, minlength=bins)[nonzero]) / counts[nonzero]
    filled = [i for i in range(bins) if counts[i] > 0]
    return [
        {
            "bin_low": rounded(float(edges[i])),
            "bin_high": rounded(float(edges[i + 1])),
            "count": int(counts[i]),
            "mean_confidence": rounded(float(pred)),
            "helpful_fraction": rounded(float(obs)),
        }
        for i, pred, obs in zip(filled, predicted, observed, strict=True)
    ]


def confidence_by_outcome(labels: Sequence[LabelPoint], *, bins: int = 10) -> dict[str, Any]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, Any] = {"bin_edges": [rounded(float(e)) for e in edges]}
    for name, value in (("helpful", 1), ("unhelpful", 0)):
        conf = [label.confidence for label in labels if label.value == value]
        counts, _ = np.histogram(np.clip(conf, 0.0, 1.0), bins=edges)
        out[name] = {
            "count": len(conf),
            "mean_confidence": rounded(float(np.mean(conf))) if conf else None,
            "histogram": [int(c) for c in counts],
        }
    return out


def model_summary(
    labels: Sequence[LabelPoint],
    events: Sequence[EventRow],
    *,
    window: int = 200,
    start: float | None = None,
) -> dict[str, Any]:
    ordered = sorted(labels, key=lambda label: label.id)
    y = [label.value for label in ordered]
    p = [label.confidence for label in ordered]
    recent = slice(max(0, len(ordered) - window), None)
    drifts = [e for e in events if e.kind == "drift"]
    return {
        "labels": len(ordered),
        "by_source": dict(Counter(label.source for label in ordered)),
        "roc_auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "accuracy": rate(sum((pi >= 0.5) == bool(yi) for yi, pi in zip(y, p, strict=True)), len(y)),
        "brier": rounded(float(np.mean((np.asarray(p) - np.asarray(y)) ** 2))) if y else None,
        "rolling_window": window,
        "rolling_roc_auc": roc_auc(y[recent], p[recent]),
        "drift_events": len(drifts),
        "drifts": [{"at": iso(e.created_at), "ts": e.created_at, **e.data} for e in drifts],
        # promotions and rollbacks, and the learner's modes (``start``: the period's)
        "versions": model_changes(ordered, events),
        "learner_modes": learner_modes(events, start),
        "learning_curve": learning_curve(ordered, window=window),
        "calibration": calibration(ordered),
        "confidence_by_outcome": confidence_by_outcome(ordered),
    }
