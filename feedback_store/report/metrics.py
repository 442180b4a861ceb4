"""Small numbers the report is made of: quantiles, ranks, ROC AUC, log loss, kappa.

Each is numpy arithmetic checked against its scikit-learn or scipy twin in the tests;
the report and the gateway's metrics import these rather than the heavy libraries.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np


def rounded(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def rate(part: int, whole: int) -> float | None:
    return rounded(part / whole) if whole else None


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), None for no values."""
    if not values:
        return None
    return rounded(float(np.quantile(np.asarray(values, dtype=float), q)), 3)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's ``rankdata``, without
    importing scipy.stats, which costs half a second)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = average[np.cumsum(new_group) - 1]
    return ranks


def roc_auc(y: Sequence[int], p: Sequence[float]) -> float | None:
    """ROC AUC by ranks (ties averaged, as scikit-learn); None unless both classes occur."""
    y_arr = np.asarray(y, dtype=int)
    positives = int(y_arr.sum())
    negatives = len(y_arr) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = average_ranks(np.asarray(p, dtype=float))
    auc = (ranks[y_arr == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    return rounded(float(auc))


def log_loss(y: Sequence[int], p: Sequence[float], eps: float = 1e-6) -> float | None:
    if len(y) == 0:
        return None
    y_arr = np.asarray(y, dtype=float)
    p_arr = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    losses = -(y_arr * np.log(p_arr) + (1 - y_arr) * np.log(1 - p_arr))
    return rounded(float(losses.mean()))


def cohen_kappa(pairs: Sequence[tuple[int, int]]) -> float | None:
    """Cohen's kappa of (first rater, second rater) pairs; None without pairs.

    When both raters put every item in one and the same category the chance agreement
    is 1 and kappa is undefined (0/0); the raters agreed on everything, so say 1.0.
    """
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else None
    return rounded((observed - expected) / (1.0 - expected))
