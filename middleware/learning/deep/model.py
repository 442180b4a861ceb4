"""The second model: a river classifier over a reply's sentence embedding, the
question-reply cosine, the label rate of its nearest labelled neighbours and the live
model's own score. Pure: embeddings in, probabilities out; the worker makes them.

It is snapshotted on its own (``to_bytes``, format ``DEEP_SNAPSHOT_FORMAT``), beside the
live model's snapshot, whose format it leaves alone.
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from river import base, linear_model, optim

from middleware.learning.model import learn as learn_weighted
from middleware.learning.model import predict

DEEP_SNAPSHOT_FORMAT = 1
Vector = Sequence[float] | np.ndarray


def unit(v: Vector) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    norm = float(np.linalg.norm(a))
    return a / norm if norm > 0 else a


class NeighbourRing:
    """The embeddings and labels of the ``size`` most recent labelled replies, and the
    label rate of the ``k`` nearest of them to a new reply (cosine similarity)."""

    def __init__(self, size: int = 2000, k: int = 10) -> None:
        if size < 1 or k < 1:
            raise ValueError(f"size and k must be at least 1 (got {size}, {k})")
        self.size, self.k = size, k
        self._vectors: deque[np.ndarray] = deque(maxlen=size)
        self._labels: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._labels)

    def add(self, v: Vector, label: bool) -> None:
        self._vectors.append(unit(v))
        self._labels.append(1.0 if label else 0.0)

    def rate(self, v: Vector) -> float | None:
        """Mean label of the nearest ``k`` (None while the ring is empty)."""
        if not self._labels:
            return None
        sims = np.stack(self._vectors) @ unit(v)
        k = min(self.k, len(sims))
        nearest = np.argpartition(-sims, k - 1)[:k]
        labels = np.asarray(self._labels)
        return float(labels[nearest].mean())


def deep_features(
    question: Vector, reply: Vector, neighbour_rate: float | None, live: float
) -> dict[str, float]:
    """What the second model reads of one reply (``question``: zeros when there is none)."""
    r = unit(reply)
    return {**embedding_features(r), **scalar_features(unit(question), r, neighbour_rate, live)}


def embedding_features(unit_reply: np.ndarray) -> dict[str, float]:
    return {f"e{i}": float(value) for i, value in enumerate(unit_reply)}


def scalar_features(
    q: np.ndarray, r: np.ndarray, neighbour_rate: float | None, live: float
) -> dict[str, float]:
    """What ``deep_features`` adds to the embedding (unit vectors in)."""
    live = min(max(live, 1e-4), 1 - 1e-4)
    return {
        "cosine": float(q @ r),
        "neighbour_rate": 0.5 if neighbour_rate is None else neighbour_rate,
        "has_neighbours": 0.0 if neighbour_rate is None else 1.0,
        "live_logit": math.log(live / (1 - live)),
    }


def _classifier() -> base.Classifier:
    # No scaler: every input is bounded already (a unit vector, a cosine, a rate, a
    # clipped logit), and standardising the embedding's near-constant dimensions would
    # blow a new reply's small differences up into saturated scores.
    return linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.2, eps=0.1))


class DeepModel:
    """The classifier and its neighbour ring. One writer (the look's task)."""

    def __init__(self, *, ring_size: int = 2000) -> None:
        self.classifier = _classifier()
        self.ring = NeighbourRing(ring_size)
        self.labels = 0

    def features(self, question: Vector, reply: Vector, live: float) -> dict[str, float]:
        return deep_features(question, reply, self.ring.rate(reply), live)

    def score(self, x: dict[str, float]) -> float | None:
        """P(helpful), or None while it has learned nothing (the live score stands)."""
        return None if self.labels == 0 else predict(self.classifier, cast(dict[str, Any], x))

    def learn(self, x: dict[str, float], reply: Vector, helpful: bool, weight: float = 1.0) -> None:
        """Learn ``x`` (made before the ring saw this reply), then add it to the ring."""
        learn_weighted(self.classifier, cast(dict[str, Any], x), helpful, weight)
        self.ring.add(reply, helpful)
        self.labels += 1

    def to_bytes(self) -> bytes:
        return pickle.dumps((DEEP_SNAPSHOT_FORMAT, self.__dict__), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, blob: bytes) -> DeepModel:
        # Our own snapshot, from our own store.
        version, state = pickle.loads(blob)
        if version != DEEP_SNAPSHOT_FORMAT:
            raise ValueError(f"deep snapshot format {version} is not {DEEP_SNAPSHOT_FORMAT}")
        model = cls.__new__(cls)
        model.__dict__.update(state)
        return model
