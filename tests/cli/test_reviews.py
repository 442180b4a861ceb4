"""``hitl reviews list|show|decide``: the queue from a terminal, over the decision path
Slack and the API use, on a store a real gateway filled."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.cli.main import main
from tests.conftest import GatewayFactory
from tests.support.servers import ServerThread


@pytest.fixture
def filled(gateway_factory: GatewayFactory, tmp_path: Path) -> tuple[ServerThread, Path, list[str]]:
    gw = gateway_factory(policy={"prior": 0.1, "review_budget": 1.0, "max_reviews_per_hour": 100})
    ids = []
    for question in ("first question", "second  question\nwith a line break", "third"):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "json", "messages": [{"role": "user", "content": question}]},
        )
        assert r.status_code == 200
        ids.append(r.json()["hitl"]["reply_id"])
    config = tmp_path / "cli.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "hitl.db"}"\n')
    return gw, config, ids


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["reviews", *argv, "--config", str(config)], environ={})
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_one_line_per_waiting_item(
    filled: tuple[ServerThread, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, config, ids = filled
    code, out, _ = run(capsys, config, "list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert "second question with a line break" in lines[1]
    assert all("confidence 0.10" in line for line in lines)


def test_decide_then_show_and_list(
    filled: tuple[ServerThread, Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    _, config, ids = filled
    code, out, _ = run(
        capsys, config, "decide", ids[0], "correct", "--reviewer", "ann", "--correction", "Fixed."
    )
    assert code == 0 and out.strip() == f"{ids[0]}: corrected by ann"
    code, out, _ = run(
        capsys, config, "decide", ids[1], "reject", "--reviewer", "bob", "--reason", "tone"
    )
    assert code == 0
    # The same path as the API: a second decision is refused, naming who decided.
    code, _, err = run(capsys, config, "decide", ids[0], "approve", "--reviewer", "bob")
    assert code == 1 and "already decided by ann" in err.lower()
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        rows = conn.execute("SELECT reply_id, source, value FROM label ORDER BY id").fetchall()
    assert rows == [(ids[0], "reviewer", 0), (ids[1], "reviewer", 0)]
    code, out, _ = run(capsys, config, "show", ids[0])
    assert code == 0
    assert "state: corrected by ann" in out and "correction:\nFixed." in out
    assert "user: first question" in out
    code, out, _ = run(capsys, config, "list")
    assert [line.split()[0] for line in out.splitlines()] == [ids[2]]
    code, out, _ = run(capsys, config, "list", "--state", "decided")
    assert sorted(line.split()[0] for line in out.splitlines()) == sorted(ids[:2])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["decide", "{id}", "correct", "--reviewer", "ann"], "correction"),
        (["decide", "hitl-000000000000000000000000", "approve", "--reviewer", "ann"], "hitl-0000"),
        (["show", "hitl-000000000000000000000000"], "hitl-0000"),
    ],
)
def test_bad_decisions_say_what_is_missing(
    filled: tuple[ServerThread, Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    _, config, ids = filled
    code, _, err = run(capsys, config, *[a.format(id=ids[0]) for a in argv])
    assert code == 2 and message in err, err


def test_a_reviewer_is_required(
    filled: tuple[ServerThread, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, config, ids = filled
    with pytest.raises(SystemExit) as exited:
        main(["reviews", "decide", ids[0], "approve", "--config", str(config)], environ={})
    assert exited.value.code == 2
    assert "--reviewer" in capsys.readouterr().err


def test_a_decision_from_the_terminal_releases_a_held_client(
    gateway_factory: GatewayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import concurrent.futures

    from tests.support.holds import HOLD_ALL, held_reply_id

    gw = gateway_factory(policy=HOLD_ALL)
    config = tmp_path / "cli.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "hitl.db"}"\n')
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            httpx.post,
            gw.url + "/v1/chat/completions",
            json={"model": "json", "messages": [{"role": "user", "content": "refund me"}]},
            timeout=30,
        )
        reply_id = held_reply_id(tmp_path / "hitl.db", "refund me")
        code, _, _ = run(capsys, config, "decide", reply_id, "approve", "--reviewer", "ann")
        assert code == 0
        answer: Any = waiting.result(timeout=15)
    assert answer.status_code == 200
    assert answer.json()["hitl"]["released"] == "original"
