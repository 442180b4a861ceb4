"""Learning from every label: the brain (model and what it knows) and its single writer.

The store's labels are the truth; the brain is a cache of having learned them in
order. ``Learner`` is the only code that mutates the brain: on start it loads the
newest snapshot and replays the labels after it (before the port opens); then it is
woken on every committed label, scores the label against the prediction stored at
reply time (progressive validation), learns it, watches the error stream for drift,
and snapshots now and then and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import pickle
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from river import anomaly, compose, drift, preprocessing

from feedback_store import LabelRow, Store, StoreError
from feedback_store.report import roc_auc
from middleware.learning.model import DEFAULT_MODEL, explain, learn, make_model, predict
from middleware.scoring.features import NUMERIC_KEYS

log = logging.getLogger("hitl.learner")

SNAPSHOT_FORMAT = 1


def squash(x: dict[str, float]) -> dict[str, float]:
    """Standard scores to (0, 1) with the logistic function."""
    return {k: 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, v)))) for k, v in x.items()}


@dataclass(frozen=True, slots=True)
class DriftEvent:
    at: float
    labels: int
    error_before: float
    error_after: float


class Progress:
    """Progressive validation: every label scored against the prediction made before it."""

    def __init__(self, window: int) -> None:
        self.ys: list[int] = []
        self.ps: list[float] = []
        self.recent_ys: deque[int] = deque(maxlen=window)
        self.recent_ps: deque[float] = deque(maxlen=window)
        self.log_loss_sum = 0.0
        self.correct = 0

    def add(self, y: int, p: float) -> None:
        self.ys.append(y)
        self.ps.append(p)
        self.recent_ys.append(y)
        self.recent_ps.append(p)
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
            "roc_auc": roc_auc(self.ys, self.ps),
            "log_loss": self.log_loss_sum / n if n else None,
            "accuracy": self.correct / n if n else None,
            "rolling_roc_auc": roc_auc(self.recent_ys, self.recent_ps),
            "rolling_accuracy": (
                sum(
                    int((p >= 0.5) == bool(y))
                    for y, p in zip(self.recent_ys, self.recent_ps, strict=True)
                )
                / len(self.recent_ys)
                if self.recent_ys
                else None
            ),
        }


class Brain:
    """The model, the outlier detector, the drift detector and per-user rates."""

    def __init__(
        self,
        *,
        model_name: str = DEFAULT_MODEL,
        rolling_window: int = 500,
        outlier_quantile: float = 0.995,
        outlier_warmup: int = 200,
        drift_ask_s: float = 900.0,
    ) -> None:
        self.model_name = model_name
        self.model = make_model(model_name)
        # Half-space trees split [0, 1]. Min-max scaling would map a new extreme to the
        # same edge as the old maximum; standardising then squashing keeps ordinary
        # replies in the middle and sends extremes to sparsely populated corners.
        self.detector = (
            preprocessing.StandardScaler()
            | compose.FuncTransformer(squash)
            | anomaly.HalfSpaceTrees(n_trees=10, height=6, window_size=128, seed=7)
        )
        self.anomaly_scores: deque[float] = deque(maxlen=2000)
        self.outlier_quantile = outlier_quantile
        self.outlier_warmup = outlier_warmup
        self._outlier_threshold = math.inf
        self._unsorted = 0
        self.adwin = drift.ADWIN(delta=0.002)
        self.drift_ask_s = drift_ask_s
        self.drift_until = 0.0
        self.progress = Progress(rolling_window)
        self.labels = 0
        self.last_label_id = 0
        self.users: dict[str, list[int]] = {}
        # Numeric features of scored replies wait here for the learner (not the request
        # path) to teach the outlier detector. Losing them in a crash costs nothing, and
        # under heavy traffic the bound keeps the freshest: the detector learns from a
        # sample (at most this many per learner pass) instead of stealing the loop.
        self.unlabelled: deque[tuple[dict[str, float], float]] = deque(maxlen=256)

    # -- read side (request path) ------------------------------------------------

    def predict(self, x: dict[str, Any]) -> float | None:
        if self.labels == 0:
            return None
        return predict(self.model, x)

    def is_outlier(self, x: dict[str, Any]) -> bool:
        """Whether the reply's numeric features are unlike recent traffic's.

        Also queues them (with their score) for the learner to teach the detector.
        """
        numeric = {k: float(x[k]) for k in NUMERIC_KEYS if k in x}
        score = self.detector.score_one(numeric)
        self.unlabelled.append((numeric, score))
        return len(self.anomaly_scores) >= self.outlier_warmup and score > self._outlier_threshold

    def user_rate(self, user: str | None) -> tuple[float | None, int]:
        if user is None or user not in self.users:
            return None, 0
        helpful, total = self.users[user]
        return helpful / total, total

    def drifting(self, now: float) -> bool:
        return now < self.drift_until

    def explain(self, x: dict[str, Any]) -> list[tuple[str, float]]:
        return explain(self.model, x)

    # -- write side (the learner task only) ----------------------------------------

    def absorb_unlabelled(self, limit: int = 256) -> int:
        """Teach the outlier detector from scored replies; returns how many."""
        n = 0
        while self.unlabelled and n < limit:
            numeric, score = self.unlabelled.popleft()
            self.detector.learn_one(numeric)
            self.anomaly_scores.append(score)
            n += 1
        self._unsorted += n
        warm = len(self.anomaly_scores) >= self.outlier_warmup
        # Sorting 2,000 scores per reply would cost more than the detector: refresh the
        # threshold once warm, then every 50 scores.
        if warm and (self._unsorted >= 50 or self._outlier_threshold == math.inf):
            ordered = sorted(self.anomaly_scores)
            index = min(len(ordered) - 1, int(self.outlier_quantile * len(ordered)))
            self._outlier_threshold = ordered[index]
            self._unsorted = 0
        return n

    def learn_label(self, row: LabelRow, *, now: float | None = None) -> DriftEvent | None:
        """Score the label against the stored prediction, then learn it."""
        now = time.time() if now is None else now
        x = orjson.loads(row.features_json)
        y = int(row.value)
        self.progress.add(y, float(row.confidence))
        event = None
        error = float((row.confidence >= 0.5) != bool(y))
        before = self.adwin.estimation
        self.adwin.update(error)
        if self.adwin.drift_detected and self.progress.count > 30:
            event = DriftEvent(now, self.labels, before, self.adwin.estimation)
            self.drift_until = now + self.drift_ask_s
        learn(self.model, x, bool(y), row.weight)
        if row.source == "user" and row.end_user:
            counts = self.users.setdefault(row.end_user, [0, 0])
            counts[0] += y
            counts[1] += 1
        self.labels += 1
        self.last_label_id = max(self.last_label_id, row.id)
        return event

    # -- snapshots ---------------------------------------------------------------

    def to_bytes(self) -> bytes:
        state = dict(self.__dict__)
        state["unlabelled"] = deque(maxlen=self.unlabelled.maxlen)
        return pickle.dumps((SNAPSHOT_FORMAT, state), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Brain:
        version, state = pickle.loads(blob)  # our own snapshot, from our own store
        if version != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {version} is not {SNAPSHOT_FORMAT}")
        brain = cls.__new__(cls)
        brain.__dict__.update(state)
        return brain


class Learner:
    """The single writer of the brain."""

    def __init__(
        self,
        store: Store,
        brain: Brain,
        *,
        snapshot_every_labels: int = 200,
        snapshot_interval_s: float = 60.0,
        poll_s: float = 1.0,
        on_drift: Callable[[DriftEvent], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.brain = brain
        self.snapshot_every_labels = snapshot_every_labels
        self.snapshot_interval_s = snapshot_interval_s
        self.poll_s = poll_s
        self.on_drift = on_drift
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._snapshot_labels = 0
        self._snapshot_at = clock()
        self._idle = asyncio.Event()
        self._idle.set()

    def wake(self) -> None:
        self._wake.set()
        self._idle.clear()

    async def restore(self) -> int:
        """Load the newest snapshot and replay the labels after it; returns labels replayed."""
        snapshot = await self.store.latest_snapshot()
        if snapshot is not None:
            try:
                brain = Brain.from_bytes(snapshot.blob)
            except Exception as exc:  # a cache we cannot read is rebuilt from the labels
                log.warning(
                    "model snapshot %s unreadable (%s); relearning all labels", snapshot.id, exc
                )
            else:
                self.brain.__dict__.update(brain.__dict__)
        replayed = await self.step()
        self._snapshot_labels = self.brain.labels
        if replayed:
            await self.snapshot()
        return replayed

    async def step(self) -> int:
        """Learn every committed label not yet learned; returns how many."""
        learned = 0
        while True:
            rows = await self.store.labels_after(self.brain.last_label_id, limit=1000)
            for row in rows:
                event = self.brain.learn_label(row, now=self.clock())
                learned += 1
                if event is not None:
                    await self._record_drift(event)
            if len(rows) < 1000:
                break
        self.brain.absorb_unlabelled()
        return learned

    async def _record_drift(self, event: DriftEvent) -> None:
        log.warning(
            "drift detected after %d labels: error rate %.3f -> %.3f",
            event.labels,
            event.error_before,
            event.error_after,
        )
        await self.store.add_event(
            "drift",
            {
                "labels": event.labels,
                "error_before": event.error_before,
                "error_after": event.error_after,
            },
            at=event.at,
        )
        if self.on_drift is not None:
            result = self.on_drift(event)
            if asyncio.iscoroutine(result):
                await result

    async def snapshot(self) -> None:
        await self.store.save_snapshot(
            self.brain.to_bytes(), last_label_id=self.brain.last_label_id, labels=self.brain.labels
        )
        self._snapshot_labels = self.brain.labels
        self._snapshot_at = self.clock()

    async def _maybe_snapshot(self) -> None:
        due_labels = self.brain.labels - self._snapshot_labels >= self.snapshot_every_labels
        due_time = (
            self.brain.labels > self._snapshot_labels
            and self.clock() - self._snapshot_at >= self.snapshot_interval_s
        )
        if due_labels or due_time:
            await self.snapshot()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.step()
                await self._maybe_snapshot()
            except StoreError as exc:
                log.error("learner could not read or write the store (%s); retrying", exc)
                await asyncio.sleep(self.poll_s)
            finally:
                if not self._wake.is_set():
                    self._idle.set()

    async def idle(self) -> None:
        """Wait until every label committed so far has been learned (for tests, replay)."""
        await self._idle.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="hitl-learner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StoreError):
            await self.step()
            if self.brain.labels != self._snapshot_labels:
                await self.snapshot()
