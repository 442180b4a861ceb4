"""Progressive validation: each label scored against the prediction stored at reply time.

``Progress`` is what the live brain keeps, and it is pickled into every snapshot, so it
is bounded: two counters and figures over the latest ``window`` labels. Whole-period
figures of a running gateway come from the store (``feedback_store.report``).
``WholeStream`` keeps every pair for exact whole-stream figures (``hitl replay``); it
lives for one run and is never pickled.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

from river import metrics, utils

from feedback_store.report import roc_auc

if TYPE_CHECKING:
    from feedback_store import Store


class Progress:
    """Labels seen, positives, and rolling ROC AUC, log loss and accuracy."""

    def __init__(self, window: int) -> None:
        self.count = 0
        self.positives = 0
        # ROC AUC needs the window's ranks; river's RollingROCAUC counts a tied pair as
        # 0 (a constant score would read 0.0, not 0.5) and buffers every update until
        # read, so the AUC is ranked here, the way the store's report ranks it.
        self.recent: deque[tuple[int, float]] = deque(maxlen=window)
        self.log_loss = utils.Rolling(metrics.LogLoss, window_size=window)
        self.accuracy = utils.Rolling(metrics.Accuracy, window_size=window)

    @property
    def window(self) -> int:
        return self.accuracy.window_size

    def add(self, y: int, p: float) -> None:
        self.count += 1
        self.positives += y
        self.recent.append((y, p))
        self.log_loss.update(bool(y), p)
        self.accuracy.update(bool(y), p >= 0.5)

    def summary(self) -> dict[str, float | int | None]:
        seen = bool(self.recent)
        ys = [y for y, _ in self.recent]
        ps = [p for _, p in self.recent]
        return {
            "labels": self.count,
            "positives": self.positives,
            "window": len(self.recent),
            "rolling_roc_auc": roc_auc(ys, ps),
            "rolling_log_loss": self.log_loss.obj.get() if seen else None,
            "rolling_accuracy": self.accuracy.obj.get() if seen else None,
        }

    @classmethod
    def from_v1(cls, old: Any) -> Progress:
        """The bounded part of a format-1 snapshot's progress (which kept every label)."""
        progress = cls(old.recent_ys.maxlen or len(old.recent_ys) or 1)
        for y, p in zip(old.recent_ys, old.recent_ps, strict=True):
            progress.add(y, p)
        progress.count = len(old.ys)
        progress.positives = sum(old.ys)
        return progress


class WholeStream:
    """Every label of one run: exact ROC AUC, log loss and accuracy over all of them."""

    def __init__(self) -> None:
        self.ys: list[int] = []
        self.ps: list[float] = []
        self.log_loss_sum = 0.0
        self.correct = 0

    def add(self, y: int, p: float) -> None:
        self.ys.append(y)
        self.ps.append(p)
        clipped = min(max(p, 1e-7), 1 - 1e-7)
        self.log_loss_sum -= math.log(clipped if y else 1 - clipped)
        self.correct += int((p >= 0.5) == bool(y))

    @property
    def count(self) -> int:
        return len(self.ys)

    def summary(self) -> dict[str, float | int | None]:
        n = self.count
        return {
            "labels": n,
            "positives": sum(self.ys),
            "roc_auc": roc_auc(self.ys, self.ps),
            "log_loss": self.log_loss_sum / n if n else None,
            "accuracy": self.correct / n if n else None,
        }

    @classmethod
    async def from_store(cls, store: Store) -> WholeStream:
        """Every label in the store, in the learner's order, with its stored prediction."""
        whole = cls()
        after = 0
        while rows := await store.labels_after(after, limit=1000):
            for row in rows:
                whole.add(int(row.value), float(row.confidence))
            after = rows[-1].id
        return whole
