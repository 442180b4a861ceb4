"""The brain: the model and what the loop knows beside it, and its snapshot bytes.

The model, the outlier detector on the numeric features, the drift detector on the
error stream, per-user helpful rates and the rolling progress. The request path only
reads it (``predict``, ``is_outlier``, ``user_rate``, ``drifting``, ``explain``); the
learner task is the only writer (``absorb_unlabelled``, ``learn_label``).
"""

from __future__ import annotations

import io
import math
import pickle
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from river import anomaly, compose, drift, preprocessing

from feedback_store import LabelRow
from middleware.learning.explain import Explanation, contributions, reasons
from middleware.learning.model import DEFAULT_MODEL, learn, make_model, predict
from middleware.learning.progress import Progress
from middleware.learning.versions import LEGACY_FEATURES_VERSION, built_with, fingerprint
from middleware.scoring.conversation import RecentThumbs, Thumbs
from middleware.scoring.features import NUMERIC_KEYS, REPLY_KEYS

# 2: progress is bounded (rolling windows and counters). 1: it kept every label; it is
# read by mapping its classes from their old home (``_MOVED``) and keeping the windows.
SNAPSHOT_FORMAT = 2


def squash(x: dict[str, float]) -> dict[str, float]:
    """Standard scores to (0, 1) with the logistic function."""
    return {k: 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, v)))) for k, v in x.items()}


@dataclass(frozen=True, slots=True)
class DriftEvent:
    at: float
    labels: int
    error_before: float
    error_after: float


#: what a serving process keeps of its own when it adopts the learner's snapshot
_LOCAL = frozenset({"detector", "anomaly_scores", "_outlier_threshold", "_unsorted", "unlabelled"})


class _V1Progress:
    """The format-1 progress as pickled: ``ys``, ``ps``, ``recent_ys``, ``recent_ps``..."""


_MOVED: dict[tuple[str, str], Any] = {
    ("middleware.learning.learner", "squash"): squash,
    ("middleware.learning.learner", "Progress"): _V1Progress,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        moved = _MOVED.get((module, name))
        return moved if moved is not None else super().find_class(module, name)


class Brain:
    """The model, the outlier and drift detectors, per-user rates and rolling progress."""

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
        #: the settings the model was built with, their fingerprint, the model version it
        #: is (``model_version``) and the snapshot generation it continues (promotions)
        self.built_with = built_with(model_name)
        self.fingerprint = fingerprint(self.built_with)
        self.version = 1
        self.generation = 0
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
        self.thumbs = RecentThumbs()
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
        numeric = {k: float(x[k]) for k in REPLY_KEYS if k in x}
        score = self.detector.score_one(numeric)
        self.unlabelled.append((numeric, score))
        return len(self.anomaly_scores) >= self.outlier_warmup and score > self._outlier_threshold

    def user_rate(self, user: str | None) -> tuple[float | None, int]:
        if user is None or user not in self.users:
            return None, 0
        helpful, total = self.users[user]
        return helpful / total, total

    def recent_thumbs(self, user: str | None) -> Thumbs | None:
        return self.thumbs.get(user)

    def drifting(self, now: float) -> bool:
        return now < self.drift_until

    def explain(self, x: dict[str, Any]) -> list[tuple[str, float]]:
        """What pulls this reply's score down most, in plain words (a review card's why)."""
        explanation = self.contributions(x)
        return [] if explanation is None else reasons(explanation)

    def contributions(self, x: dict[str, Any]) -> Explanation | None:
        return contributions(self.model, x)

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
        # The texts are stored once, in the exchange's columns (older rows kept them here).
        x.setdefault("reply", row.reply_text)
        x.setdefault("question", row.question)
        # A reply scored by older feature code lacks the newer numeric keys: they read 0.0,
        # as features() stores a missing signal (the model's Select refuses a missing key).
        for key in NUMERIC_KEYS:
            x.setdefault(key, 0.0)
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
            self.thumbs.record(row.end_user, bool(y))
        self.labels += 1
        self.last_label_id = max(self.last_label_id, row.id)
        return event

    # -- snapshots ---------------------------------------------------------------

    def adopt(self, other: Brain) -> None:
        """Serve what ``other`` (the fleet learner's snapshot) learned, keeping this
        process's outlier detector: it learns from the traffic this process sees, which
        the learner process never does. No await inside: a prediction sees the old state
        or the new one, never a mix."""
        for name, value in other.__dict__.items():
            if name not in _LOCAL:
                setattr(self, name, value)

    def to_bytes(self) -> bytes:
        state = dict(self.__dict__)
        state["unlabelled"] = deque(maxlen=self.unlabelled.maxlen)
        return pickle.dumps((SNAPSHOT_FORMAT, state), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Brain:
        # Our own snapshot, from our own store.
        version, state = _Unpickler(io.BytesIO(blob)).load()
        if version == 1:
            state["progress"] = Progress.from_v1(state["progress"])
        elif version != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {version} is not {SNAPSHOT_FORMAT}")
        if "built_with" not in state:  # from before model versions
            legacy = built_with(state["model_name"], features_version=LEGACY_FEATURES_VERSION)
            state.update(built_with=legacy, fingerprint=fingerprint(legacy))
            state.update(version=1, generation=0)
        brain = cls.__new__(cls)
        state.setdefault("thumbs", RecentThumbs())  # snapshots from before the thumbs
        brain.__dict__.update(state)
        return brain
