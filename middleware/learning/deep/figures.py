"""The deeper look's rolling figures, beside the live model's, for the report (pure).

Each label the second model learns is first scored by it (its score just before it
learned that label) and kept with the live model's score of the same reply, for the
``HISTORY`` most recent labels. From those pairs: each tier's ROC AUC, and the share of
the thumbs-down replies it would have caught had a review budget of ``budget`` gone to
the replies it scored lowest. The flow saves them beside its snapshot
(``feedback_store.DEEP_FIGURES_KEY``), where the report reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from feedback_store.report import roc_auc

#: the labels the figures are over (the newest)
HISTORY = 2000

#: (helpful, the deeper look's score, the live model's score)
Scored = tuple[bool, float, float]


def caught(ys: Sequence[bool], ps: Sequence[float], budget: float) -> float | None:
    """The share of unhelpful replies among the ``budget`` share scored lowest."""
    downs = sum(1 for y in ys if not y)
    if not downs or not ys:
        return None
    n = math.ceil(budget * len(ys))
    lowest = sorted(range(len(ps)), key=lambda i: ps[i])[:n]
    return round(sum(1 for i in lowest if not ys[i]) / downs, 4)


def tier_figures(history: Sequence[Scored], budget: float) -> dict[str, Any]:
    """Both tiers' figures over the same labels (JSON-ready)."""
    ys = [y for y, _, _ in history]
    figures: dict[str, Any] = {"labels": len(ys), "budget": budget}
    for name, column in (("deep", 1), ("live", 2)):
        ps = [row[column] for row in history]
        auc = roc_auc([int(y) for y in ys], ps) if ys else None
        figures[name] = {
            "roc_auc": None if auc is None else round(float(auc), 4),
            "caught_at_budget": caught(ys, ps, budget),
        }
    return figures
