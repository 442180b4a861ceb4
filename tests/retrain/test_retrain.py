"""``hitl retrain`` and ``hitl models`` on stores filled by ``hitl replay``, and a served
gateway that switches to a promoted model, and back, without a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.retrain.conftest import config, filled, hitl
from tests.support.fleet import serving
from tests.support.processes import GatewayProcess
from tests.support.waiting import wait_for


def last_json(out: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_a_better_feature_set_is_promoted(reply_only_store: Path) -> None:
    tmp = reply_only_store.parent
    reads_question = tmp / "question.toml"
    reads_question.write_text(config(tmp / "hitl.db", "logreg-adagrad"))
    out = hitl(
        tmp, "retrain", "--config", str(reads_question), "--promote", "--by", "ana", "--json"
    )
    result = last_json(out.stdout)
    assert set(result["candidate"]) == set(result["live"]) == {"roc_auc", "log_loss", "caught"}
    assert result["candidate"]["roc_auc"] > result["live"]["roc_auc"] + 0.2
    assert result["candidate"]["log_loss"] < result["live"]["log_loss"]
    low, high = result["interval"]
    assert 0 < low <= result["auc_difference"] <= high
    assert result["promoted"] is True and result["version"] == 2
    assert "ROC AUC" in out.stdout and "candidate" in out.stdout  # the table
    listed = [json.loads(line) for line in hitl(tmp, "models", "--config", str(reads_question),
                                                "--json").stdout.splitlines()]  # fmt: skip
    assert [(v["version"], v["kind"], v["live"]) for v in listed] == [
        (1, "online", False),
        (2, "retrain", True),
    ]
    assert listed[1]["by"] == "ana" and listed[1]["model"] == "logreg-adagrad"
    assert listed[1]["roc_auc"] == result["candidate"]["roc_auc"]
    assert listed[0]["fingerprint"] != listed[1]["fingerprint"]


def test_the_same_settings_rebuild_the_live_model_and_are_not_promoted(tmp_path: Path) -> None:
    path = filled(tmp_path, "logreg-adagrad-reply", n=200)
    out = hitl(tmp_path, "retrain", "--config", str(path), "--promote", "--json")
    result = last_json(out.stdout)
    # Replaying the labels in order with the live settings rebuilds the live model: the
    # held-out predictions are those it stored at reply time.
    assert result["candidate"] == result["live"]
    assert result["promoted"] is False and "not promoted" in out.stdout
    assert hitl(tmp_path, "models", "--config", str(path), "--json").stdout == ""


def test_a_worse_feature_set_is_not_promoted(tmp_path: Path) -> None:
    path = filled(tmp_path, "logreg-adagrad")
    reply_only = tmp_path / "reply.toml"
    reply_only.write_text(config(tmp_path / "hitl.db", "logreg-adagrad-reply"))
    result = last_json(
        hitl(tmp_path, "retrain", "--config", str(reply_only), "--promote", "--json").stdout
    )
    assert result["candidate"]["roc_auc"] < result["live"]["roc_auc"]
    assert result["interval"][1] < 0
    assert result["promoted"] is False
    listed = hitl(tmp_path, "models", "--config", str(path), "--json").stdout
    assert listed == ""  # nothing went live


def probe(gateway: GatewayProcess, n: int) -> float:
    """The confidence of a reply to a question the question-reading model knows is bad
    (a new user each time, so no per-user or earlier-reply state differs)."""
    body = {
        "model": "local",
        "user": f"probe-{n}",
        "messages": [{"role": "user", "content": "tell me about the refund please"}],
    }
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return float(response.headers["x-hitl-confidence"])


def served(gateway: GatewayProcess) -> dict[str, Any]:
    model: dict[str, Any] = httpx.get(gateway.url + "/healthz", timeout=5).json()["model"]
    return model


def test_a_settings_change_without_retrain_is_reported_at_start(tmp_path: Path) -> None:
    filled(tmp_path, "logreg-adagrad-reply", n=120)
    with serving(tmp_path, config(tmp_path / "hitl.db", "logreg-adagrad-reply")) as first:
        assert served(first)["settings_differ"] is False
    # the first gateway learned the replayed labels and left a snapshot when it stopped
    changed = config(tmp_path / "hitl.db", "naive-bayes")
    with serving(tmp_path, changed) as gateway:
        model = served(gateway)
        out = gateway.output()
    assert "built with model logreg-adagrad-reply" in out
    assert "configured with model naive-bayes" in out and "hitl retrain --promote" in out
    assert model["settings_differ"] is True and model["version"] == 1


def test_the_served_gateway_switches_to_a_promotion_and_rolls_back_exactly(
    tmp_path: Path,
) -> None:
    filled(tmp_path, "logreg-adagrad-reply", n=300)
    reads_question = config(tmp_path / "hitl.db", "logreg-adagrad")
    cli = tmp_path / "cli.toml"
    cli.write_text(reads_question)
    # The gateway serves the reply-only model; the retrain reads the question too.
    with serving(tmp_path, config(tmp_path / "hitl.db", "logreg-adagrad-reply")) as gateway:
        before = [probe(gateway, n) for n in range(3)]
        assert len(set(before)) == 1  # the same model answers the same
        promoted = last_json(hitl(tmp_path, "retrain", "--config", str(cli), "--promote",
                                  "--json").stdout)  # fmt: skip
        assert promoted["promoted"] is True
        assert wait_for(lambda: served(gateway)["generation"] == 1, timeout=30)
        assert served(gateway)["version"] == 2
        after = probe(gateway, 10)
        assert after < before[0] - 0.15  # it reads the question now
        out = hitl(tmp_path, "models", "--config", str(cli), "rollback", "1", "--by", "bo")
        assert "model version 1 is live again" in out.stdout
        assert wait_for(lambda: served(gateway)["generation"] == 2, timeout=30)
        assert served(gateway)["version"] == 1
        assert probe(gateway, 20) == before[0]
        # and forward again: version 2 as the learner kept it when it was rolled back
        hitl(tmp_path, "models", "--config", str(cli), "rollback", "2")
        assert wait_for(lambda: served(gateway)["generation"] == 3, timeout=30)
        assert probe(gateway, 30) == after
    rows = [json.loads(line) for line in hitl(tmp_path, "models", "--config", str(cli),
                                              "--json").stdout.splitlines()]  # fmt: skip
    assert [r["live"] for r in rows] == [False, True]
