"""A restart on the same database keeps votes, replies and the feedback tokens."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import ServerThread


def ask(gw: ServerThread, text: str) -> dict[str, Any]:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": text}]},
    )
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    return hitl


def vote(gw: ServerThread, hitl: dict[str, Any], rating: str) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": rating},
    )


def rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        return conn.execute(sql).fetchall()


def test_votes_and_tokens_survive_a_restart(gateway_factory: Any, tmp_path: Path) -> None:
    first = gateway_factory()
    voted = ask(first, "voted before")
    unvoted = ask(first, "not voted yet")
    assert vote(first, voted, "up").status_code == 201
    first.stop()

    second = gateway_factory()
    # The old token still works: the vote is still there, so this is a change (200).
    again = vote(second, voted, "down")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "updated"
    # A reply made before the restart can get its first vote after it.
    assert vote(second, unvoted, "up").status_code == 201
    # New replies are signed with the same secret as before.
    fresh = ask(second, "after the restart")
    assert vote(second, fresh, "up").status_code == 201
    assert sorted(rows(tmp_path, "SELECT reply_id, rating, changes FROM feedback")) == sorted(
        [
            (voted["reply_id"], "down", 1),
            (unvoted["reply_id"], "up", 0),
            (fresh["reply_id"], "up", 0),
        ]
    )
    # One label per reply: the re-vote after the restart was not learned twice.
    assert rows(tmp_path, "SELECT count(*) FROM label") == [(3,)]


def test_the_generated_secret_is_kept_in_the_store_once(
    gateway_factory: Any, tmp_path: Path
) -> None:
    first = gateway_factory()
    token = ask(first, "x")["feedback_token"]
    first.stop()
    second = gateway_factory()
    hitl = ask(second, "y")
    assert hitl["feedback_token"] != token
    assert rows(tmp_path, "SELECT count(*) FROM keyvalue WHERE key = 'feedback_token_secret'") == [
        (1,)
    ]


def test_a_secret_from_the_environment_works_across_restarts(
    gateway_factory: Any, tmp_path: Path
) -> None:
    environ = {"HITL_TOKEN_SECRET": "a-long-enough-secret-for-tokens"}
    first = gateway_factory(environ=environ)
    hitl = ask(first, "x")
    first.stop()
    second = gateway_factory(environ=environ)
    assert vote(second, hitl, "up").status_code == 201
    # Nothing was generated: the environment's secret was used.
    assert rows(tmp_path, "SELECT count(*) FROM keyvalue") == [(0,)]


def test_tokens_signed_under_another_secret_are_refused(gateway_factory: Any) -> None:
    first = gateway_factory(environ={"HITL_TOKEN_SECRET": "the-first-secret-xxxxxxxx"})
    hitl = ask(first, "x")
    first.stop()
    second = gateway_factory(environ={"HITL_TOKEN_SECRET": "the-second-secret-xxxxxxx"})
    assert vote(second, hitl, "up").status_code == 403
