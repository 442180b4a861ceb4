"""Batch mode learns only at its schedule; a fleet's leader adopts a promotion."""

from __future__ import annotations

import json

from feedback_store import Store
from middleware.learner_settings import MODEL_NAMES
from middleware.learning.brain import Brain
from middleware.learning.learner import Follower, Learner
from middleware.learning.model import CANDIDATES
from middleware.learning.retrain import RetrainPlan, promote, retrain
from tests.retrain.conftest import add_labels


def test_the_settings_name_every_model() -> None:
    assert set(MODEL_NAMES) == set(CANDIDATES)


async def test_batch_mode_learns_only_at_its_schedule(sqlite_store: Store) -> None:
    now = [1000.0]
    learner = Learner(sqlite_store, Brain(), mode="batch", batch_every_s=60.0, clock=lambda: now[0])
    await add_labels(sqlite_store, 5)
    assert await learner.begin() == 0  # stored labels wait for the first batch
    learner.wake()  # a committed label does not make a batch
    now[0] += 59.0
    await learner.tick()
    assert learner.brain.labels == 0
    now[0] += 2.0
    await learner.tick()
    assert learner.brain.labels == 5
    snapshot = await sqlite_store.latest_snapshot()
    assert snapshot is not None and snapshot.labels == 5  # every batch ends in a snapshot
    await add_labels(sqlite_store, 3, start=5)
    now[0] += 30.0
    await learner.tick()
    assert learner.brain.labels == 5
    now[0] += 31.0
    await learner.tick()
    assert learner.brain.labels == 8
    modes = [json.loads(e.data_json) for e in await sqlite_store.events("learner_mode")]
    assert modes == [{"mode": "batch", "batch_every_s": 60.0}]
    await learner.close()


async def test_the_fleets_leader_adopts_a_promotion_rather_than_overwriting_it(
    postgres_url: str,
) -> None:
    from feedback_store.leadership import AdvisoryLock

    store = Store(postgres_url)
    await store.start()
    try:
        await add_labels(store, 60)
        leader = Learner(store, Brain(model_name="hoeffding-tree"),
                         leadership=AdvisoryLock(store), lead_check_s=0.0)  # fmt: skip
        assert await leader.begin() == 60
        follower = Follower(store, Brain())
        plan = RetrainPlan(model="logreg-adagrad", rolling_window=50, holdout=0.25,
                           passes=2, shuffle=True, seed=1, resamples=100, budget=0.2,
                           prior=0.5)  # fmt: skip
        rebuilt = await retrain(store, plan)
        await add_labels(store, 4, start=60)  # arriving during the rebuild
        await promote(store, rebuilt, by="test")
        assert rebuilt.brain.labels == 64
        await leader.snapshot()  # the old model's next snapshot is refused...
        snapshot = await store.latest_snapshot()
        assert snapshot is not None and snapshot.generation == 1
        await leader.tick()  # ...and the leader adopts the promotion
        assert leader.brain.model_name == "logreg-adagrad" and leader.brain.generation == 1
        await add_labels(store, 2, start=64)
        await leader.tick()
        assert leader.brain.labels == 66  # it learns on from the promoted model
        await leader.snapshot()
        assert await follower.step()
        assert follower.brain.model_name == "logreg-adagrad"
        assert follower.brain.labels == 66
        await leader.close()
    finally:
        await store.close()
