"""The edges of ``hitl retrain`` and ``hitl models``: too few labels is a clear message
and exit status 2, never a traceback; ``--json`` ends with exactly the issue's figures;
``hitl models rollback`` takes ``--config`` before or after the word ``rollback``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from feedback_store import Store
from middleware.cli.main import main
from middleware.learning.brain import Brain
from middleware.learning.learner import Learner
from middleware.learning.retrain import RetrainPlan, promote, retrain
from tests.retrain.conftest import add_labels


def store_with(db: Path, labels: int) -> str:
    async def fill() -> None:
        store = Store(f"sqlite:///{db}")
        await store.start()
        try:
            await add_labels(store, labels)
        finally:
            await store.close()

    asyncio.run(fill())
    return f"sqlite:///{db}"


def test_retrain_on_a_store_without_labels_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_with(tmp_path / "empty.db", 0)
    assert main(["retrain", "--store", url, "--json"], environ={}) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no table, no JSON line: nothing was compared
    assert "the store holds no labels; comparing needs at least 8 at --holdout 0.2" in err
    assert "Traceback" not in err and "try --holdout" not in err  # no holdout would do


def test_models_on_a_new_store_says_there_is_none_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_with(tmp_path / "new.db", 0)
    assert main(["models", "--store", url], environ={}) == 0
    out = capsys.readouterr().out
    assert out.startswith("no model saved yet: the learner saves version 1 after the first label")
    assert "created" not in out  # no empty table under it
    assert main(["models", "--store", url, "--json"], environ={}) == 0
    assert capsys.readouterr().out == ""  # JSON lines: none


def test_retrain_with_too_few_to_hold_out_says_how_many_and_a_holdout_that_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_with(tmp_path / "few.db", 5)
    assert main(["retrain", "--store", url, "--promote"], environ={}) == 2
    err = capsys.readouterr().err
    assert "the store holds 5 labels; comparing needs at least 8 at --holdout 0.2" in err
    assert "or try --holdout 0.3" in err and "Traceback" not in err
    # ... and the holdout it suggests does compare them
    assert main(["retrain", "--store", url, "--holdout", "0.3", "--json"], environ={}) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["candidate"]) == set(result["live"]) == {"roc_auc", "log_loss", "caught"}
    assert "interval" in result and (result["trained"], result["held_out"]) == (3, 2)


def test_a_bad_holdout_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_with(tmp_path / "few.db", 5)
    with pytest.raises(SystemExit) as stopped:
        main(["retrain", "--store", url, "--holdout", "1.5"], environ={})
    assert stopped.value.code == 2
    assert "--holdout: '1.5' is not a share between 0 and 1" in capsys.readouterr().err


async def promoted(url: str) -> None:
    """Version 1 kept by a learner, version 2 promoted and live."""
    store = Store(url)
    await store.start()
    try:
        learner = Learner(store, Brain(model_name="logreg-adagrad-reply"))
        await learner.begin()
        plan = RetrainPlan(model="logreg-adagrad", rolling_window=50, holdout=0.25,
                           passes=1, shuffle=False, seed=0, resamples=100, budget=0.2,
                           prior=0.5)  # fmt: skip
        await promote(store, await retrain(store, plan), by="ana")
        await learner.close()
    finally:
        await store.close()


def live_version(url: str) -> int:
    async def read() -> int:
        store = Store(url)
        await store.start()
        try:
            snapshot = await store.latest_snapshot()
            assert snapshot is not None
            return snapshot.version
        finally:
            await store.close()

    return asyncio.run(read())


def test_models_rollback_takes_config_after_the_word_rollback_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_with(tmp_path / "hitl.db", 40)
    asyncio.run(promoted(url))
    config = tmp_path / "elsewhere.toml"
    config.write_text(f'[store]\nurl = "{url}"\n')
    # The working directory has a config.toml of its own: only --config finds this store.
    after = ["models", "rollback", "1", "--config", str(config), "--by", "bo"]
    assert main(after, environ={}) == 0
    assert "model version 1 is live again" in capsys.readouterr().out
    assert live_version(url) == 1
    before = ["models", "--config", str(config), "rollback", "2"]
    assert main(before, environ={}) == 0
    assert live_version(url) == 2
    assert main(["models", "--json", "rollback", "2", "--store", url], environ={}) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()[-2:]]
    assert [(v["version"], v["live"]) for v in listed] == [(1, False), (2, True)]
