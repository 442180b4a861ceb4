"""``hitl retrain --recompute``: the candidate's features computed again from the stored
exchanges, with the per-user and conversation state rebuilt as the replay goes.

The stores are filled by ``hitl replay`` (the real reply, vote and learner flows) from
streams where end users come back and ask the same question again (siblings)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, select, update

from feedback_store import Store
from feedback_store.purge import Scope
from feedback_store.tables import exchange_t
from middleware.flows.retention import purge
from middleware.learning.recompute import code_keys, recompute, stale
from middleware.learning.retrain import RetrainPlan, retrain, stored_labels
from middleware.scoring.features import FEATURES_VERSION
from tests.retrain.conftest import config, hitl
from tests.support.processes import clean_env

#: the features an older feature code did not have: the end user's own history
USER_KEYS = ("user_rate", "user_logit", "user_votes", "user_known")
THUMB_KEYS = ("last_thumb", "fast_rate", "has_thumbs")


def grumpy_stream(path: Path, n: int, seed: int = 5) -> None:
    """Whether a reply helps depends on who asks (half the users are hard to please),
    never on the words: only the end user's own history tells."""
    rng = random.Random(seed)
    questions = ("what are your hours", "where can I park", "do you ship abroad")
    with path.open("w") as out:
        for i in range(n):
            user = rng.randrange(16)
            grumpy = user % 2 == 0
            helped = rng.random() < (0.15 if grumpy else 0.85)
            history = [{"role": "bot", "text": "Hello, how can I help?"}] if i % 3 else []
            row = {
                "question": rng.choice(questions),
                "history": history,
                "reply": rng.choice(("Here is what I know.", "Thanks, see our page.")),
                "label": int(helped),
                "meta": {"user": f"u-{user}"},
            }
            out.write(json.dumps(row) + "\n")


def replayed(tmp: Path, model: str, n: int) -> tuple[Path, str]:
    stream = tmp / "stream.jsonl"
    grumpy_stream(stream, n)
    db = tmp / "hitl.db"
    path = tmp / "live.toml"
    path.write_text(config(db, model))
    hitl(tmp, "replay", str(stream), "--config", str(path), "--store", f"sqlite:///{db}",
         "--quiet", "--no-baseline")  # fmt: skip
    return path, f"sqlite:///{db}"


async def opened(url: str) -> Store:
    store = Store(url)
    await store.start()
    return store


def plan(model: str = "logreg-adagrad") -> RetrainPlan:
    return RetrainPlan(model=model, rolling_window=100, holdout=0.3, passes=1,
                       shuffle=False, seed=0, resamples=200, budget=0.2, prior=0.5)  # fmt: skip


def stored(url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    async def read() -> list[tuple[str, dict[str, Any]]]:
        store = await opened(url)
        try:
            return [(r.reply_id, orjson.loads(r.features_json)) for r in await stored_labels(store)]
        finally:
            await store.close()

    yield from asyncio.run(read())


@pytest.fixture(scope="module")
def current(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store filled by today's feature code (the live model reads the numbers too)."""
    return replayed(tmp_path_factory.mktemp("current"), "logreg-adagrad", 240)


def test_recompute_gives_what_scoring_gave_for_todays_code(current: tuple[Path, str]) -> None:
    _, url = current
    before = dict(stored(url))

    async def run() -> dict[str, str]:
        store = await opened(url)
        try:
            labels = await stored_labels(store)
            assert stale(labels) is None  # nothing to redo: auto keeps the stored features
            done = await recompute(store, labels, why="test")
            assert (done.exchanges, done.recomputed, done.fell_back) == (240, 240, 0)
            return {row.reply_id: row.features_json for row in done.rows}
        finally:
            await store.close()

    again = {reply_id: orjson.loads(text) for reply_id, text in asyncio.run(run()).items()}
    assert again == before  # every feature of every exchange, exactly
    # ... and the state the features read was really rebuilt, not just empty both times
    assert sum(x["user_known"] == 1.0 for x in again.values()) > 200
    assert sum(x["has_thumbs"] == 1.0 for x in again.values()) > 200
    assert sum(x["has_sibling"] == 1.0 for x in again.values()) > 50
    assert len({x["user_rate"] for x in again.values()}) > 50


def test_the_same_settings_with_recompute_rebuild_the_live_model(current: tuple[Path, str]) -> None:
    path, _ = current
    out = hitl(path.parent, "retrain", "--config", str(path), "--recompute", "--json")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["features"]["recomputed"] is True and result["features"]["labelled"] == 240
    assert result["candidate"] == result["live"]  # the same features, the same model
    assert "features: recomputed with feature code version" in out.stdout


def strip(url: str, keys: tuple[str, ...]) -> None:
    """Make every stored row look written by an older feature code without ``keys``, from
    before exchanges recorded their feature code version."""

    def job(conn: Connection) -> None:
        for reply_id, text in conn.execute(select(exchange_t.c.id, exchange_t.c.features_json)):
            x = {k: v for k, v in orjson.loads(text).items() if k not in keys}
            conn.execute(
                update(exchange_t)
                .where(exchange_t.c.id == reply_id)
                .values(features_json=orjson.dumps(x).decode(), features_version=None)
            )

    async def run() -> None:
        store = await opened(url)
        try:
            await store.write(job)
        finally:
            await store.close()

    asyncio.run(run())


#: ``hitl`` as it ran before the user's features existed: they read neutral constants
#: while scoring (so the live model learned nothing from them), then are not stored
OLDER_CODE = """
import sys
from middleware.scoring import scorer
today = scorer.features
def older(view):
    return {**today(view), **dict.fromkeys(%r, 0.0), "user_rate": 0.5}
scorer.features = older
from middleware.cli.main import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store written by an older feature code: scored without the end user's history,
    stored without its features (``FEATURES_VERSION`` 2 added the thumbs)."""
    tmp = tmp_path_factory.mktemp("old")
    stream, db = tmp / "stream.jsonl", tmp / "hitl.db"
    grumpy_stream(stream, 320)
    path = tmp / "live.toml"
    path.write_text(config(db, "logreg-adagrad"))
    script = OLDER_CODE % (tuple(k for k in USER_KEYS + THUMB_KEYS if k != "user_rate"),)
    subprocess.run([sys.executable, "-c", script, "replay", str(stream), "--config", str(path),
                    "--quiet", "--no-baseline", "--store", f"sqlite:///{db}"],
                   cwd=tmp, env=clean_env(), check=True, timeout=240)  # fmt: skip
    strip(f"sqlite:///{db}", USER_KEYS + THUMB_KEYS)
    return path, f"sqlite:///{db}"


def test_stored_features_without_the_new_ones_are_not_promoted(old: tuple[Path, str]) -> None:
    path, url = old
    cli = path.parent / "new.toml"
    cli.write_text(config(Path(url.removeprefix("sqlite:///")), "logreg-adagrad"))
    out = hitl(path.parent, "retrain", "--config", str(cli), "--stored-features", "--promote",
               "--json")  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["features"]["recomputed"] is False
    assert "320 of 320 labelled exchanges" in result["features"]["stale"]
    assert "as stored at reply time, though 320 of 320" in out.stdout
    assert result["promoted"] is False  # without the user's history it cannot tell


def test_a_store_of_older_features_is_recomputed_by_default_and_promoted(
    old: tuple[Path, str],
) -> None:
    path, url = old
    cli = path.parent / "new.toml"
    cli.write_text(config(Path(url.removeprefix("sqlite:///")), "logreg-adagrad"))
    out = hitl(path.parent, "retrain", "--config", str(cli), "--promote", "--by", "ana",
               "--json")  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    features = result["features"]
    assert features["recomputed"] is True and features["labelled"] == 320
    assert "320 of 320 labelled exchanges were stored by other feature code" in features["why"]
    assert "without fast_rate, has_thumbs, last_thumb, user_known" in features["why"]
    assert f"recomputed with feature code version {FEATURES_VERSION}" in out.stdout
    assert result["candidate"]["roc_auc"] > result["live"]["roc_auc"] + 0.15
    assert result["promoted"] is True and result["interval"][0] > 0
    listed = [json.loads(line) for line in hitl(path.parent, "models", "--config", str(cli),
                                                "--json").stdout.splitlines()]  # fmt: skip
    assert listed[-1]["live"] and listed[-1]["features_version"] == FEATURES_VERSION


def test_recomputed_rows_have_the_code_s_features_and_purged_ones_fall_back(
    tmp_path: Path,
) -> None:
    _, url = replayed(tmp_path, "logreg-adagrad", 120)
    strip(url, USER_KEYS)

    async def run() -> tuple[Any, list[dict[str, Any]], int]:
        store = await opened(url)
        try:
            gone = await purge(store, Scope(end_user="u-3"))
            labels = await stored_labels(store)
            rebuilt = await retrain(store, plan())
            return rebuilt, [orjson.loads(r.features_json) for r in labels], gone.exchanges
        finally:
            await store.close()

    rebuilt, before, purged = asyncio.run(run())
    assert purged > 0
    done = rebuilt.features
    assert done is not None and done.fell_back == purged and done.recomputed == 120 - purged
    assert rebuilt.features_dict()["purged_kept_stored"] == purged
    after = [orjson.loads(r.features_json) for r in done.rows]
    kept = [x for x in after if "~reply" in x]
    assert len(kept) == purged  # the digest learns what the text taught; no user features
    assert all(not set(USER_KEYS) & set(x) for x in kept)
    fresh = [x for x in after if "~reply" not in x]
    assert all(set(x) == code_keys() for x in fresh)
    assert all(set(USER_KEYS).isdisjoint(x) for x in before if "~reply" not in x)
    assert rebuilt.brain.built_with["features_version"] == FEATURES_VERSION


def test_the_same_keys_from_another_feature_code_version_are_recomputed(tmp_path: Path) -> None:
    _, url = replayed(tmp_path, "logreg-adagrad", 60)

    def older(conn: Connection) -> None:
        conn.execute(update(exchange_t).where(exchange_t.c.id.in_(
            select(exchange_t.c.id).order_by(exchange_t.c.id).limit(25).scalar_subquery()
        )).values(features_version=FEATURES_VERSION - 1))  # fmt: skip

    async def run() -> tuple[str | None, str | None, Any]:
        store = await opened(url)
        try:
            fresh = stale(await stored_labels(store))
            await store.write(older)
            labels = await stored_labels(store)
            return fresh, stale(labels), await retrain(store, plan())
        finally:
            await store.close()

    fresh, why, rebuilt = asyncio.run(run())
    assert fresh is None  # every exchange records today's version
    # The keys are today's: only the recorded version tells these 25 apart.
    assert why == (
        f"25 of 60 labelled exchanges were stored by other feature code (version "
        f"{FEATURES_VERSION - 1}; this code is version {FEATURES_VERSION})"
    )
    assert rebuilt.features is not None and rebuilt.features.recomputed == 60
