"""The learning loop through the HTTP API: votes teach the model within seconds,
kill -9 loses nothing, re-votes are stored but learned once, replay reports figures.
Then the brain alone: bounded progress and snapshots, old snapshots, restore."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from river import compose

from feedback_store import LabelRow, Store
from middleware.learning.brain import Brain
from middleware.learning.learner import Learner
from middleware.learning.progress import Progress, WholeStream
from middleware.scoring.features import NUMERIC_KEYS, ExchangeView, features
from tests.support.fleet import start_serve
from tests.support.processes import free_port
from tests.support.report_data import T0, exchange_row, user_vote
from tests.support.servers import ServerThread
from tests.support.waiting import wait_for

HEDGES = [
    "I'm not sure, maybe it could be {w}, I think.",
    "I don't know, perhaps {w}? Hard to say.",
    "Maybe {w}, but I am not sure about that.",
    "I guess it might be {w}, possibly.",
]
PLAIN = [
    "The answer is {w}.",
    "{w} is configured in config.toml.",
    "Set {w} and restart the gateway.",
    "Use {w}; it is documented in the README.",
]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def hedging(i: int) -> str:
    return HEDGES[i % len(HEDGES)].format(w=WORDS[i % len(WORDS)])


def plain(i: int) -> str:
    return PLAIN[i % len(PLAIN)].format(w=WORDS[i % len(WORDS)])


def ask(url: str, reply: str, user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "reply:" + reply,
        "messages": [{"role": "user", "content": "question about the gateway"}],
    }
    if user:
        body["user"] = user
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    return hitl


def vote(url: str, hitl: dict[str, Any], rating: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": rating},
        timeout=10,
    )


def teach(url: str, n: int = 40) -> None:
    for i in range(n):
        assert vote(url, ask(url, hedging(i)), "down").status_code == 201
        assert vote(url, ask(url, plain(i)), "up").status_code == 201


def gap(url: str) -> float:
    """How much lower a new hedging reply scores than a new plain one."""
    return (
        ask(url, "Perhaps omega, I'm not sure.")["confidence"]
        - ask(url, "Omega is the answer.")["confidence"]
    )


def test_votes_teach_the_model_within_seconds(gateway_factory: Any) -> None:
    gw: ServerThread = gateway_factory(server={"feedback_per_minute": 0})
    learner = gw.config.app.state.parts.learner  # type: ignore[attr-defined]
    before = gap(gw.url)
    assert before == 0.0  # untrained: both get the prior
    teach(gw.url)
    assert wait_for(lambda: learner.brain.labels >= 80, timeout=5.0), "labels not learned in 5 s"
    assert gap(gw.url) <= -0.15


def test_revote_is_stored_but_learned_once(gateway_factory: Any, tmp_path: Path) -> None:
    gw: ServerThread = gateway_factory()
    learner = gw.config.app.state.parts.learner  # type: ignore[attr-defined]
    hitl = ask(gw.url, plain(1))
    assert vote(gw.url, hitl, "up").status_code == 201
    assert wait_for(lambda: learner.brain.labels == 1)
    changed = vote(gw.url, hitl, "down")
    assert changed.status_code == 200
    assert changed.json()["status"] == "updated"
    time.sleep(0.3)
    assert learner.brain.labels == 1
    db = sqlite3.connect(tmp_path / "hitl.db")
    assert db.execute("SELECT rating, changes FROM feedback").fetchall() == [("down", 1)]
    assert db.execute("SELECT source, value FROM label").fetchall() == [("user", 1)]


def test_kill_9_loses_no_learning(tmp_path: Path, upstream_server: ServerThread) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[server]
feedback_per_minute = 0
[upstream]
kind = "openai"
base_url = "{upstream_server.url}/v1"
[store]
url = "sqlite:///{tmp_path / "hitl.db"}"
[learner]
snapshot_every_labels = 50
"""
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(tmp_path, config.read_text(), port=port).process
    try:
        teach(url)
        assert wait_for(lambda: gap(url) <= -0.15, timeout=10.0)
        probes = [hedging(99), plain(99), "Something else entirely."]
        before = [ask(url, p)["confidence"] for p in probes]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    proc = start_serve(tmp_path, config.read_text(), port=port).process
    try:
        after = [ask(url, p)["confidence"] for p in probes]
        assert after == before
        assert gap(url) <= -0.15
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _write_stream(path: Path, rows: list[tuple[str, int]], user: str | None = "u1") -> None:
    with path.open("w") as out:
        for i, (reply, label) in enumerate(rows):
            out.write(
                json.dumps(
                    {
                        "id": f"t-{i}",
                        "order": i,
                        "question": "what is it?",
                        "history": [{"role": "user", "text": "hello"}],
                        "reply": reply,
                        "label": label,
                        "meta": {} if user is None else {"user": f"{user}-{i % 7}"},
                    }
                )
                + "\n"
            )


def _replay(*args: str, cwd: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "middleware.cli", "replay", *args, "--json", "--quiet"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_replay_json_has_every_key(tmp_path: Path) -> None:
    rows = [(hedging(i), 0) if i % 2 else (plain(i), 1) for i in range(200)]
    stream = tmp_path / "stream.jsonl"
    _write_stream(stream, rows)
    result = _replay(str(stream), cwd=tmp_path)
    assert set(result) == {
        "labels",
        "roc_auc",
        "log_loss",
        "accuracy",
        "caught_at_budget",
        "escalated_share",
        "baseline",
        "labels_per_second",
    }
    assert result["labels"] == 200
    assert result["roc_auc"] > 0.9  # the pattern is trivially learnable
    assert 0 < result["log_loss"] < 0.7
    assert 0.5 < result["accuracy"] <= 1
    for budget in ("0.1", "0.2", "0.3"):
        assert 0 <= result["escalated_share"][budget] <= float(budget) + 0.01
        assert 0 <= result["caught_at_budget"][budget] <= 1
    assert result["caught_at_budget"]["0.3"] > result["caught_at_budget"]["0.1"]
    assert set(result["baseline"]) == {"roc_auc", "caught_at_budget"}
    assert result["labels_per_second"] > 0


def test_shifted_stream_records_drift_and_outliers(tmp_path: Path) -> None:
    # First the hedging replies are the bad ones; then users turn around. Last, replies
    # become huge and strange: outliers for the numeric-feature detector.
    rows = [(hedging(i), 0) if i % 2 else (plain(i), 1) for i in range(400)]
    rows += [(hedging(i), 1) if i % 2 else (plain(i), 0) for i in range(400)]
    rows += [(" ".join(["zzz?!"] * 400), i % 2) for i in range(30)]
    stream = tmp_path / "shift.jsonl"
    # Anonymous: each of seven users' thumbs alternates here, so their last thumb (a
    # conversation feature) would foretell the next label through the turnaround.
    _write_stream(stream, rows, user=None)
    db = tmp_path / "shift.db"
    _replay(str(stream), "--store", f"sqlite:///{db}", "--no-baseline", cwd=tmp_path)
    con = sqlite3.connect(db)
    drifts = [
        json.loads(d) for (d,) in con.execute("SELECT data_json FROM event WHERE kind = 'drift'")
    ]
    assert drifts, "no drift event recorded after the labels turned around"
    assert any(d["error_after"] > d["error_before"] for d in drifts)
    assert all(d["labels"] >= 400 for d in drifts)
    flagged = con.execute("SELECT count(*) FROM exchange WHERE outlier").fetchone()[0]
    assert flagged >= 1
    late = con.execute(
        "SELECT count(*) FROM exchange WHERE outlier AND length(reply_text) > 1000"
    ).fetchone()[0]
    assert late >= 1


@pytest.mark.parametrize("rows", [0, 5])
def test_replay_of_tiny_streams(tmp_path: Path, rows: int) -> None:
    stream = tmp_path / "tiny.jsonl"
    _write_stream(stream, [(plain(i), i % 2) for i in range(rows)])
    result = _replay(str(stream), cwd=tmp_path)
    assert result["labels"] == rows


# -- the brain, its progress and its snapshots, without a server ------------------------


PAIRS = [(1, 0.9), (0, 0.8), (1, 0.6), (0, 0.3), (1, 0.3), (0, 0.1)]


def test_rolling_progress_matches_a_hand_computed_window() -> None:
    progress = Progress(4)
    assert progress.summary() == {
        "labels": 0,
        "positives": 0,
        "window": 0,
        "rolling_roc_auc": None,
        "rolling_log_loss": None,
        "rolling_accuracy": None,
    }
    for y, p in PAIRS:
        progress.add(y, p)
    summary = progress.summary()
    assert (summary["labels"], summary["positives"], summary["window"]) == (6, 3, 4)
    # The last four: (1, .6) (0, .3) (1, .3) (0, .1). Positive-negative pairs: .6 > .3,
    # .6 > .1, .3 = .3 (a tie counts a half), .3 > .1: 3.5 of 4.
    assert summary["rolling_roc_auc"] == 0.875
    logs = -(math.log(0.6) + math.log(1 - 0.3) + math.log(0.3) + math.log(1 - 0.1))
    assert summary["rolling_log_loss"] == pytest.approx(logs / 4)
    # At 0.5: right, right, wrong (a helpful reply at .3), right.
    assert summary["rolling_accuracy"] == 0.75


def test_whole_stream_figures_are_exact_over_every_label() -> None:
    whole = WholeStream()
    for y, p in PAIRS:
        whole.add(y, p)
    summary = whole.summary()
    assert (summary["labels"], summary["positives"]) == (6, 3)
    # Positives .9 .6 .3 against negatives .8 .3 .1: .9 wins 3, .6 wins 2, .3 wins 1
    # and ties 1: 6.5 of 9.
    assert summary["roc_auc"] == round(6.5 / 9, 4)
    logs = -sum(math.log(p if y else 1 - p) for y, p in PAIRS)
    assert summary["log_loss"] == pytest.approx(logs / 6)
    assert summary["accuracy"] == pytest.approx(4 / 6)
    assert WholeStream().summary()["roc_auc"] is None


def _x(i: int) -> dict[str, Any]:
    reply = hedging(i) if i % 2 else plain(i)
    return features(ExchangeView(question="question about the gateway", reply=reply))


def _teach(brain: Brain, labels: range) -> None:
    """Label ``i`` is an odd (hedging) reply voted down or an even (plain) one voted up."""
    for i in labels:
        x = _x(i)
        predicted = brain.predict(x)
        row = LabelRow(
            id=i + 1,
            reply_id=f"r{i}",
            source="user",
            value=1 - i % 2,
            weight=1.0,
            created_at=float(i),
            confidence=0.5 if predicted is None else predicted,
            features_json=orjson.dumps(x).decode(),
            end_user=f"u{i % 13}",
        )
        brain.learn_label(row, now=float(i))


def test_snapshot_size_stays_bounded_however_many_labels() -> None:
    brain = Brain(rolling_window=200)
    _teach(brain, range(500))
    at_500 = len(brain.to_bytes())
    _teach(brain, range(500, 5000))
    at_5000 = len(brain.to_bytes())
    assert brain.progress.count == 5000
    assert at_5000 < 1.5 * at_500, (at_500, at_5000)


def test_snapshot_round_trip_keeps_predictions_and_progress() -> None:
    brain = Brain(rolling_window=50)
    _teach(brain, range(120))
    copy = Brain.from_bytes(brain.to_bytes())
    expected = [brain.predict(_x(i)) for i in range(4)]
    assert [copy.predict(_x(i)) for i in range(4)] == pytest.approx(expected, abs=1e-12)
    assert copy.progress.summary() == brain.progress.summary()
    assert (copy.labels, copy.last_label_id, copy.users) == (120, 120, brain.users)


def _format_1(brain: Brain, ys: list[int], ps: list[float], window: int) -> bytes:
    """A snapshot as format 1 wrote it: a progress with every label, classes in learner.py."""
    from middleware.learning import learner

    class Progress:
        pass

    def squash(x: dict[str, float]) -> dict[str, float]:
        return x

    Progress.__module__ = squash.__module__ = learner.__name__
    Progress.__qualname__ = "Progress"
    squash.__qualname__ = "squash"
    old = Progress()
    old.__dict__.update(
        ys=ys,
        ps=ps,
        recent_ys=deque(ys, maxlen=window),
        recent_ps=deque(ps, maxlen=window),
        log_loss_sum=1.0,
        correct=0,
    )
    state = dict(vars(brain), progress=old, unlabelled=deque(maxlen=256))
    state["detector"] = detector = copy.deepcopy(brain.detector)
    for step in detector.steps.values():
        if isinstance(step, compose.FuncTransformer):
            step.func = squash
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(learner, "Progress", Progress, raising=False)
        patch.setattr(learner, "squash", squash, raising=False)
        return pickle.dumps((1, state), protocol=pickle.HIGHEST_PROTOCOL)


def test_a_format_1_snapshot_still_loads() -> None:
    brain = Brain()
    _teach(brain, range(60))
    ys = [1 - i % 2 for i in range(60)]
    ps = [0.9 - 0.8 * (i % 2) for i in range(60)]
    loaded = Brain.from_bytes(_format_1(brain, ys, ps, window=10))
    expected = [brain.predict(_x(i)) for i in range(4)]
    assert [loaded.predict(_x(i)) for i in range(4)] == pytest.approx(expected, abs=1e-12)
    assert loaded.labels == 60
    summary = loaded.progress.summary()
    assert (summary["labels"], summary["positives"], summary["window"]) == (60, 30, 10)
    assert (summary["rolling_roc_auc"], summary["rolling_accuracy"]) == (1.0, 1.0)
    # The old detector's squash now lives in brain.py.
    assert loaded.detector.score_one(dict.fromkeys(NUMERIC_KEYS, 1.0)) >= 0.0


async def _label(store: Store, labels: range) -> None:
    """Exchanges voted on: even ones plain, up, predicted 0.8; odd ones hedging, down, 0.2."""
    for i in labels:
        row = dataclasses.replace(
            exchange_row(f"e{i}", i, "a", "deliver", 0.8 - 0.6 * (i % 2), "q", {}, i),
            reply_text=hedging(i) if i % 2 else plain(i),
            features_json=orjson.dumps(_x(i)).decode(),
        )
        await store.record_exchange(row)
        await user_vote(store, f"e{i}", "down" if i % 2 else "up", T0 + i)


async def _labelled_store(tmp_path: Path, n: int) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'learner.db'}")
    await store.start()
    await _label(store, range(n))
    return store


async def test_restore_relearns_every_label_when_the_snapshot_is_unreadable(
    tmp_path: Path,
) -> None:
    store = await _labelled_store(tmp_path, 30)
    try:
        await store.save_snapshot(b"not a pickle", last_label_id=30, labels=30)
        learner = Learner(store, Brain())
        assert await learner.restore() == 30
        assert learner.brain.progress.count == 30
    finally:
        await store.close()


async def test_restore_starts_from_a_format_1_snapshot_and_replays_what_follows(
    tmp_path: Path,
) -> None:
    store = await _labelled_store(tmp_path, 30)
    try:
        taught = Learner(store, Brain())
        await taught.step()
        await store.save_snapshot(
            _format_1(taught.brain, [1, 0] * 15, [0.8, 0.2] * 15, window=500),
            last_label_id=30,
            labels=30,
        )
        await _label(store, range(30, 35))
        learner = Learner(store, Brain())
        assert await learner.restore() == 5
        await taught.step()
        assert learner.brain.labels == taught.brain.labels == 35
        assert learner.brain.predict(_x(1)) == pytest.approx(taught.brain.predict(_x(1)), abs=1e-12)
        assert learner.brain.progress.summary()["labels"] == 35
        assert (await store.latest_snapshot()).labels == 35  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_whole_stream_from_the_store_scores_every_stored_prediction(
    tmp_path: Path,
) -> None:
    store = await _labelled_store(tmp_path, 12)
    try:
        summary = (await WholeStream.from_store(store)).summary()
    finally:
        await store.close()
    # Up at 0.8, down at 0.2, alternating: every label ranked and called right.
    assert summary == {
        "labels": 12,
        "positives": 6,
        "roc_auc": 1.0,
        "log_loss": pytest.approx(-math.log(0.8)),
        "accuracy": 1.0,
    }
