"""A serving process that follows the fleet's learner says its settings differ from the
model it serves, and stops saying so once it serves the retrain that was promoted with
its settings (``/healthz`` ``model.settings_differ``), without a restart."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx

from feedback_store import Store
from feedback_store.leadership import AdvisoryLock
from middleware.learning.brain import Brain
from middleware.learning.learner import Learner
from middleware.learning.retrain import RetrainPlan, promote, retrain
from tests.retrain.conftest import add_labels
from tests.support.fleet import serving
from tests.support.processes import GatewayProcess
from tests.support.waiting import wait_for

PLAN = RetrainPlan(model="logreg-adagrad", rolling_window=50, holdout=0.25, passes=1,
                   shuffle=False, seed=0, resamples=100, budget=0.2, prior=0.5)  # fmt: skip


def served(gateway: GatewayProcess) -> dict[str, Any]:
    model: dict[str, Any] = httpx.get(gateway.url + "/healthz", timeout=5).json()["model"]
    return model


async def test_a_follower_stops_saying_its_settings_differ_once_it_serves_the_promotion(
    postgres_url: str, tmp_path: Path
) -> None:
    store = Store(postgres_url)
    await store.start()
    # The fleet's learner (this test), serving the reply-only model it built.
    leader = Learner(store, Brain(model_name="logreg-adagrad-reply"),
                     leadership=AdvisoryLock(store))  # fmt: skip
    try:
        await add_labels(store, 40)
        assert await leader.begin() == 40 and leader.leading
        config = f'[store]\nurl = "{postgres_url}"\n\n[learner]\nmodel = "logreg-adagrad"\n'
        with contextlib.ExitStack() as stack:
            # A gateway configured for the question-reading model: it follows.
            gateway = await asyncio.to_thread(stack.enter_context, serving(tmp_path, config))
            model = await asyncio.to_thread(served, gateway)
            assert model["learner"] == "following" and model["settings_differ"] is True
            await promote(store, await retrain(store, PLAN), by="test")

            def switched() -> bool:
                return served(gateway)["version"] == 2

            assert await asyncio.to_thread(wait_for, switched, 30)
            model = await asyncio.to_thread(served, gateway)
            assert model["settings_differ"] is False and model["generation"] == 1
            await asyncio.to_thread(gateway.stop)
            assert "configured with model logreg-adagrad" in gateway.output()  # said at start
    finally:
        await leader.close()
        await store.close()
