"""``POST /v1/feedback``: every row of the contract, through a real gateway and SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import ServerThread


def ask(gw: ServerThread, text: str = "hello", **headers: str) -> dict[str, Any]:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": text}]},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    return hitl


def vote(gw: ServerThread, body: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/feedback", json=body)


def rows(directory: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "hitl.db") as conn:
        return conn.execute(sql, params).fetchall()


def assert_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert "Traceback" not in r.text
    return error


@pytest.fixture
def gw(module_gateway: ServerThread) -> ServerThread:
    """The module's shared gateway (no rate limit); rows are looked up by reply id."""
    return module_gateway


@pytest.fixture
def db(module_tmp: Path) -> Path:
    return module_tmp


def test_new_vote_is_201_and_stored(gw: ServerThread, db: Path) -> None:
    hitl = ask(gw)
    r = vote(
        gw,
        {
            "reply_id": hitl["reply_id"],
            "token": hitl["feedback_token"],
            "rating": "down",
            "reason": "incomplete",
            "comment": "it stopped early",
            "correction": "the whole answer",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"reply_id": hitl["reply_id"], "rating": "down", "status": "created"}
    assert rows(
        db,
        "SELECT rating, reason, comment, correction, changes FROM feedback WHERE reply_id = ?",
        hitl["reply_id"],
    ) == [("down", "incomplete", "it stopped early", "the whole answer", 0)]
    assert rows(db, "SELECT source, value FROM label WHERE reply_id = ?", hitl["reply_id"]) == [
        ("user", 0)
    ]


def test_changed_and_repeated_votes_are_200_and_last_wins(gw: ServerThread, db: Path) -> None:
    hitl = ask(gw)
    body = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"]}
    assert vote(gw, {**body, "rating": "up"}).status_code == 201
    changed = vote(gw, {**body, "rating": "down", "reason": "tone"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["status"] == "updated"
    repeated = vote(gw, {**body, "rating": "down", "reason": "other"})
    assert repeated.status_code == 200, repeated.text
    # One vote per reply and voter, holding the last one.
    assert rows(
        db,
        "SELECT rating, reason, changes FROM feedback WHERE reply_id = ?",
        hitl["reply_id"],
    ) == [("down", "other", 2)]
    # The learner saw the first vote only: a changed vote appends no second label.
    assert rows(db, "SELECT value FROM label WHERE reply_id = ?", hitl["reply_id"]) == [(1,)]


def test_a_thumb_clicked_again_keeps_the_comment_written_after_it(
    gw: ServerThread, db: Path
) -> None:
    hitl = ask(gw)
    body = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "down"}
    assert vote(gw, body).status_code == 201
    assert vote(gw, {**body, "comment": "the address is wrong"}).status_code == 200
    assert vote(gw, {**body, "comment": "   "}).status_code == 200  # blank is no comment
    assert vote(gw, body).status_code == 200
    assert rows(
        db, "SELECT rating, comment, changes FROM feedback WHERE reply_id = ?", hitl["reply_id"]
    ) == [("down", "the address is wrong", 3)]


def test_votes_of_different_end_users_are_separate(gw: ServerThread, db: Path) -> None:
    alice = ask(gw, "from alice", **{"x-hitl-user": "alice"})
    bob = ask(gw, "from bob", **{"x-hitl-user": "bob"})
    for hitl in (alice, bob):
        r = vote(
            gw, {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "up"}
        )
        assert r.status_code == 201, r.text
    voters = rows(
        db,
        "SELECT voter FROM feedback WHERE reply_id IN (?, ?) ORDER BY voter",
        alice["reply_id"],
        bob["reply_id"],
    )
    assert voters == [("user:alice",), ("user:bob",)]


def test_bad_token_is_403(gw: ServerThread, db: Path) -> None:
    hitl = ask(gw)
    other = ask(gw, "another")
    for token in ("not-a-token", other["feedback_token"], hitl["feedback_token"][:-2] + "AA"):
        r = vote(gw, {"reply_id": hitl["reply_id"], "token": token, "rating": "up"})
        error = assert_error(r, 403)
        assert error["code"] == "invalid_token"
    assert rows(db, "SELECT count(*) FROM feedback WHERE reply_id = ?", hitl["reply_id"]) == [(0,)]


def test_bad_token_for_unknown_reply_is_403_too(gw: ServerThread) -> None:
    # Ids can't be probed: without the right token an unknown id answers like a known one.
    r = vote(gw, {"reply_id": "hitl-000000000000000000000000", "token": "x" * 32, "rating": "up"})
    assert_error(r, 403)


def test_unknown_reply_with_a_valid_token_is_404(gw: ServerThread, db: Path) -> None:
    app: Any = gw.config.app
    signer = app.state.parts.signer
    reply_id = "hitl-never-recorded"
    r = vote(gw, {"reply_id": reply_id, "token": signer.sign(reply_id), "rating": "up"})
    error = assert_error(r, 404)
    assert reply_id in error["message"]
    assert rows(db, "SELECT count(*) FROM feedback WHERE reply_id = ?", reply_id) == [(0,)]


def test_too_large_is_413(gateway_factory: Any) -> None:
    gw = gateway_factory(server={"max_feedback_bytes": 1024})
    hitl = ask(gw)
    body = {
        "reply_id": hitl["reply_id"],
        "token": hitl["feedback_token"],
        "rating": "down",
        "comment": "x" * 2000,
    }
    error = assert_error(vote(gw, body), 413)
    assert "1024" in error["message"]


def test_too_large_chunked_without_content_length_is_413(gateway_factory: Any) -> None:
    gw = gateway_factory(server={"max_feedback_bytes": 1024})

    def chunks() -> Iterator[bytes]:
        yield b'{"comment": "'
        for _ in range(8):
            yield b"y" * 512
        yield b'"}'

    with httpx.Client() as client:
        request = client.build_request(
            "POST",
            gw.url + "/v1/feedback",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        r = client.send(request)
    assert_error(r, 413)


def test_small_chunked_body_is_accepted(gw: ServerThread) -> None:
    hitl = ask(gw)
    data = (
        f'{{"reply_id": "{hitl["reply_id"]}", "token": "{hitl["feedback_token"]}", "rating": "up"}}'
    ).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 10):
            yield data[i : i + 10]

    r = httpx.post(gw.url + "/v1/feedback", content=chunks())
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"rating": None}, "rating", "'rating' is required"),
        ({"rating": "meh"}, "rating", "rating"),
        ({"rating": 5}, "rating", "rating"),
        ({"reason": "rude"}, "reason", "incorrect, incomplete, unsafe, off-topic, tone, other"),
        ({"stars": 5}, "stars", "'stars' is not a field"),
        ({"comment": 123}, "comment", "comment"),
        ({"reply_id": None}, "reply_id", "'reply_id' is required"),
        ({"token": ["a"]}, "token", "token"),
        ({"token": ""}, "token", "'token' must not be empty"),
        ({"comment": "x" * 4001}, "comment", "'comment' must be at most 4000 characters"),
    ],
)
def test_invalid_body_is_422_naming_the_field(
    gw: ServerThread, change: dict[str, Any], field: str, says: str
) -> None:
    hitl = ask(gw)
    body: dict[str, Any] = {
        "reply_id": hitl["reply_id"],
        "token": hitl["feedback_token"],
        "rating": "up",
    }
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    error = assert_error(vote(gw, body), 422)
    assert error["param"] == field
    assert says in error["message"]
    assert field in error["message"]


def test_every_documented_reason_is_accepted(gw: ServerThread, db: Path) -> None:
    hitl = ask(gw)
    body = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "down"}
    for reason in ("incorrect", "incomplete", "unsafe", "off-topic", "tone", "other"):
        r = vote(gw, {**body, "reason": reason})
        assert r.status_code in (200, 201), r.text
        assert rows(db, "SELECT reason FROM feedback WHERE reply_id = ?", hitl["reply_id"]) == [
            (reason,)
        ]


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"rating": "up"'])
def test_malformed_json_is_400(gw: ServerThread, raw: bytes) -> None:
    r = httpx.post(
        gw.url + "/v1/feedback", content=raw, headers={"content-type": "application/json"}
    )
    error = assert_error(r, 400)
    assert error["code"] == "invalid_json"


def test_a_json_array_is_422_not_500(gw: ServerThread) -> None:
    assert_error(httpx.post(gw.url + "/v1/feedback", json=[1, 2]), 422)


def test_over_the_rate_limit_is_429(gateway_factory: Any) -> None:
    gw = gateway_factory(server={"feedback_per_minute": 3})
    hitl = ask(gw)
    body = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "up"}
    assert [vote(gw, body).status_code for _ in range(3)] == [201, 200, 200]
    r = vote(gw, body)
    error = assert_error(r, 429)
    assert error["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


def test_rate_limit_zero_means_unlimited(gw: ServerThread) -> None:
    # The shared gateway runs with feedback_per_minute = 0: more than the default 60 pass.
    hitl = ask(gw)
    body = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "up"}
    with httpx.Client(base_url=gw.url) as client:
        statuses = {client.post("/v1/feedback", json=body).status_code for _ in range(65)}
    assert statuses == {200, 201}
