"""``hitl replay`` with the deeper look on: both tiers over one stream.

Each replayed reply is scored by the live model (the reply flow), then by the deeper
look, before its thumb is learned: the look runs as it would between two requests on an
idle machine, so the combined score is the deeper look's wherever it ran. Every text is
embedded ahead, in large batches (``Embedder.prefetch``): the vectors are what the worker
would make one reply at a time, at a fraction of the round trips.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from feedback_store.report import roc_auc
from middleware.flows.deep import DeepFlow


async def prepare(deep: DeepFlow, texts: Iterable[str]) -> None:
    await deep.restore()
    await deep.look.embedder.prefetch([t or " " for t in texts])


async def look_at(deep: DeepFlow, reply_id: str, question: str, reply: str, live: float) -> float:
    """The combined score of one reply: the deeper look's, or ``live`` where it had none."""
    deep.look.submit(reply_id, question, reply, live)
    for result in await deep.look.step():
        if result.reply_id == reply_id:
            return round(result.combined, 4)
    return live


def figures(ys: list[int], ps: list[float]) -> dict[str, Any]:
    """ROC AUC, log loss and accuracy of scores ``ps`` (P(helpful)) against labels ``ys``."""
    n = len(ys)
    if not n:
        return {"roc_auc": None, "log_loss": None, "accuracy": None}
    loss = 0.0
    for y, p in zip(ys, ps, strict=True):
        p = min(max(p, 1e-7), 1 - 1e-7)
        loss -= math.log(p if y else 1 - p)
    correct = sum((p >= 0.5) == bool(y) for y, p in zip(ys, ps, strict=True))
    return {"roc_auc": roc_auc(ys, ps), "log_loss": loss / n, "accuracy": correct / n}
