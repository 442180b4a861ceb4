"""The second model and its neighbour ring: pure, no torch (embeddings made here)."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from middleware.learning.deep.model import DeepModel, NeighbourRing, deep_features


def test_the_ring_rates_the_nearest_labels_and_stays_bounded() -> None:
    ring = NeighbourRing(size=4, k=2)
    assert ring.rate([1.0, 0.0]) is None
    ring.add([1.0, 0.0], True)
    ring.add([0.9, 0.1], True)
    ring.add([0.0, 1.0], False)
    ring.add([0.1, 0.9], False)
    assert ring.rate([1.0, 0.05]) == 1.0
    assert ring.rate([0.05, 1.0]) == 0.0
    ring.add([0.0, 1.0], False)  # the oldest helpful one leaves
    assert len(ring) == 4
    assert ring.rate([1.0, 0.0]) == 0.5
    with pytest.raises(ValueError, match="at least 1"):
        NeighbourRing(size=0)


def test_deep_features_read_the_cosine_the_rate_and_the_live_score() -> None:
    x = deep_features([1.0, 0.0], [3.0, 4.0], None, 0.5)
    assert x["e0"] == pytest.approx(0.6) and x["e1"] == pytest.approx(0.8)
    assert x["cosine"] == pytest.approx(0.6)
    assert (x["neighbour_rate"], x["has_neighbours"], x["live_logit"]) == (0.5, 0.0, 0.0)
    y = deep_features([0.0, 0.0], [1.0, 0.0], 0.25, 0.9)
    assert y["cosine"] == 0.0  # no question
    assert (y["neighbour_rate"], y["has_neighbours"]) == (0.25, 1.0)
    assert y["live_logit"] == pytest.approx(math.log(9))
    assert math.isfinite(deep_features([1.0], [1.0], None, 1.0)["live_logit"])


def _vector(rng: random.Random, helpful: bool) -> list[float]:
    centre = (1.0, 0.0, 0.0) if helpful else (0.0, 1.0, 0.0)
    return [c + rng.gauss(0, 0.3) for c in centre]


def test_it_learns_what_the_embeddings_say_and_survives_a_snapshot() -> None:
    rng = random.Random(3)
    model = DeepModel(ring_size=200)
    q = [0.0, 0.0, 1.0]
    assert model.score(model.features(q, [1.0, 0.0, 0.0], 0.5)) is None
    for i in range(300):
        helpful = i % 2 == 0
        r = _vector(rng, helpful)
        model.learn(model.features(q, r, 0.5), r, helpful)
    good = model.score(model.features(q, [1.0, 0.0, 0.0], 0.5))
    bad = model.score(model.features(q, [0.0, 1.0, 0.0], 0.5))
    assert good is not None and bad is not None and good > 0.75 > 0.3 > bad
    restored = DeepModel.from_bytes(model.to_bytes())
    assert restored.labels == 300 and len(restored.ring) == 200
    assert restored.score(restored.features(q, [1.0, 0.0, 0.0], 0.5)) == good
    with pytest.raises(ValueError, match="deep snapshot format 9"):
        DeepModel.from_bytes(pickle.dumps((9, {})))
