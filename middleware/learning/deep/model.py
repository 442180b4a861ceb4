"""The second model: an online logistic regression over a reply's sentence embedding,
the question-reply cosine, the label rate of its nearest labelled neighbours and the
live model's own score. Pure: embeddings in, probabilities out; the worker makes them.

Tuned on the ConvAI stream only (README, "the deeper look"): it starts as the live
model (weight 1 on the live logit) and learns what to add to it; the 384 embedding
dimensions learn at a tenth of the scalars' rate (each is one small part of a unit
vector, and at the same rate they drown the live score in noise); the neighbour rate
reads the 50 nearest of the last 5,000 labelled replies.

It is snapshotted on its own (``to_bytes``, format ``DEEP_SNAPSHOT_FORMAT``), beside the
live model's snapshot, whose format it leaves alone.
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Sequence

import numpy as np

from middleware.learning.deep.figures import HISTORY, Scored

DEEP_SNAPSHOT_FORMAT = 2
#: the neighbours whose label rate the model reads, and the ring they come from
NEIGHBOURS = 50
RING_SIZE = 5000
#: AdaGrad's rates: the scalars', and each embedding dimension's
LEARNING_RATE = 0.2
EMBEDDING_RATE = 0.02
Vector = Sequence[float] | np.ndarray


def unit(v: Vector) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    norm = float(np.linalg.norm(a))
    return a / norm if norm > 0 else a


class NeighbourRing:
    """The embeddings and labels of the ``size`` most recent labelled replies, and the
    label rate of the ``k`` nearest of them to a new reply (cosine similarity)."""

    def __init__(self, size: int = RING_SIZE, k: int = NEIGHBOURS) -> None:
        if size < 1 or k < 1:
            raise ValueError(f"size and k must be at least 1 (got {size}, {k})")
        self.size, self.k = size, k
        # one preallocated block, written round: no copy of the ring per look
        self._vectors: np.ndarray | None = None
        self._labels = np.zeros(size, dtype=np.float32)
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, self.size)

    def add(self, v: Vector, label: bool) -> None:
        u = unit(v)
        if self._vectors is None or self._vectors.shape[1] != len(u):
            self._vectors, self._count = np.zeros((self.size, len(u)), dtype=np.float32), 0
        slot = self._count % self.size
        self._vectors[slot] = u
        self._labels[slot] = 1.0 if label else 0.0
        self._count += 1

    def rate(self, v: Vector) -> float | None:
        """Mean label of the nearest ``k`` (None while the ring is empty)."""
        n = len(self)
        if n == 0 or self._vectors is None:
            return None
        sims = self._vectors[:n] @ unit(v)
        k = min(self.k, n)
        nearest = np.argpartition(-sims, k - 1)[:k]
        return float(self._labels[:n][nearest].mean())


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


class Logistic:
    """Logistic regression learned one weighted label at a time with AdaGrad, over the
    features ``deep_features`` names (the order of the first ``x`` it sees).

    No scaler: every input is bounded already (a unit vector, a cosine, a rate, a
    clipped logit); standardising the embedding's near-constant dimensions measured
    worse on ConvAI (0.662 AUC at the same rate, 0.746 at a 70th of it).
    """

    def __init__(self, *, rate: float = LEARNING_RATE, embedding_rate: float = EMBEDDING_RATE):
        self.rate, self.embedding_rate = rate, embedding_rate
        self.names: tuple[str, ...] = ()
        self.w = np.zeros(0)
        self.g2 = np.zeros(0)
        self.rates = np.zeros(0)
        self.bias = self.bias_g2 = 0.0

    def _vector(self, x: dict[str, float]) -> np.ndarray:
        if not self.names:
            self.names = tuple(x)
            self.w = np.array([1.0 if n == "live_logit" else 0.0 for n in self.names])
            self.g2 = np.zeros(len(self.names))
            self.rates = np.array(
                [self.embedding_rate if n[1:].isdigit() else self.rate for n in self.names]
            )
        if tuple(x) == self.names:
            return np.fromiter(x.values(), dtype=float, count=len(self.names))
        return np.array([x.get(n, 0.0) for n in self.names])

    def predict(self, x: dict[str, float]) -> float:
        return _sigmoid(float(self.w @ self._vector(x)) + self.bias)

    def learn(self, x: dict[str, float], y: bool, weight: float = 1.0) -> None:
        v = self._vector(x)
        error = weight * (_sigmoid(float(self.w @ v) + self.bias) - (1.0 if y else 0.0))
        g = error * v
        self.g2 += g * g
        self.w -= self.rates * g / (np.sqrt(self.g2) + 0.1)
        self.bias_g2 += error * error
        self.bias -= self.rate * error / (math.sqrt(self.bias_g2) + 0.1)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(z, -30.0), 30.0)))


class DeepModel:
    """The classifier and its neighbour ring. One writer (the look's task)."""

    def __init__(self, *, ring_size: int = RING_SIZE, neighbours: int = NEIGHBOURS) -> None:
        self.classifier = Logistic()
        self.ring = NeighbourRing(ring_size, neighbours)
        self.labels = 0
        #: what ``figures.tier_figures`` reads: each learned label and both tiers' scores
        self.history: deque[Scored] = deque(maxlen=HISTORY)

    def features(self, question: Vector, reply: Vector, live: float) -> dict[str, float]:
        return deep_features(question, reply, self.ring.rate(reply), live)

    def score(self, x: dict[str, float]) -> float | None:
        """P(helpful), or None while it has learned nothing (the live score stands)."""
        return None if self.labels == 0 else self.classifier.predict(x)

    def learn(self, x: dict[str, float], reply: Vector, helpful: bool, weight: float = 1.0) -> None:
        """Learn ``x`` (made before the ring saw this reply), then add it to the ring; the
        score it had just before is kept for the figures (the live one where it had none)."""
        live = _sigmoid(x.get("live_logit", 0.0))
        score = self.score(x)
        self.history.append((helpful, live if score is None else round(score, 4), round(live, 4)))
        self.classifier.learn(x, helpful, weight)
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
