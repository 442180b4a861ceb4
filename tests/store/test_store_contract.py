"""One battery of store tests, run over SQLite and PostgreSQL alike.

PostgreSQL cases need ``$HITL_TEST_POSTGRES_URL`` (a server URL) and skip with that
reason when it is unset. The run creates its own database (``hitl_test_<random>``,
emptied before each test, dropped at the end); schema tests get a database each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text

from feedback_store import (
    Escalation,
    Event,
    Exchange,
    Feedback,
    KeyValue,
    Label,
    ModelSnapshot,
    NewEscalation,
    NewExchange,
    ReviewCounts,
    ReviewVote,
    SchemaError,
    Store,
    StoreError,
    current_revision,
    head_revision,
)
from feedback_store.urls import sync_url


def _empty_postgres(url: str) -> None:
    """Empty every table of the run's shared database (ids restart), keeping its schema."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            tables = conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            ).scalars()
            names = ", ".join(f'"{name}"' for name in tables)
            if names:
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store: a new SQLite file, or the run's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_run_url")
    _empty_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with nothing in it, not even a schema (PostgreSQL: one of its own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(store_url, config_hint="test.toml")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def exchange(reply_id: str, **values: Any) -> NewExchange:
    """A complete row, as the gateway's recorder writes one."""
    row: dict[str, Any] = {
        "id": reply_id,
        "created_at": time.time(),
        "model": "m",
        "route": "chat",
        "end_user": None,
        "stream": False,
        "request_json": "{}",
        "question": "q?",
        "reply_text": "a.",
        "finish_reason": "stop",
        "status": "complete",
        "upstream_status": 200,
        "upstream_ms": 1.0,
        "total_ms": 2.0,
        "confidence": 0.5,
        "decision": "deliver",
        "ask_feedback": False,
        "outlier": False,
        "features_json": "{}",
        "reasons_json": "[]",
        "meta_json": "{}",
    }
    row.update(values)
    return NewExchange(**row)


def escalation(reply_id: str, **values: Any) -> NewEscalation:
    now = time.time()
    row: dict[str, Any] = {
        "reply_id": reply_id,
        "state": "pending",
        "hold": False,
        "trigger": "policy",
        "created_at": now,
        "next_attempt_at": now,
    }
    row.update(values)
    return NewEscalation(**row)


async def vote(
    store: Store, reply_id: str, rating: str = "up", voter: str | None = None, **kw: Any
) -> Any:
    """A vote by ``voter`` (default: named after the exchange's end user, as the gateway does)."""
    args: dict[str, Any] = {"reason": None, "comment": None, "correction": None, "weight": 1.0}
    args.update(kw)

    def name(end_user: str | None) -> str:
        return voter or (f"user:{end_user}" if end_user else "user")

    return await store.vote(reply_id=reply_id, voter=name, rating=rating, **args)


# -- schema ------------------------------------------------------------------------


async def test_start_creates_the_schema_at_the_newest_revision(fresh_url: str) -> None:
    assert await asyncio.to_thread(current_revision, fresh_url) is None
    store = Store(fresh_url)
    await store.start()
    try:
        assert await asyncio.to_thread(current_revision, fresh_url) == head_revision()
        tables = (Exchange, Feedback, Label, Escalation, ReviewVote, ModelSnapshot, Event, KeyValue)
        for model in tables:
            assert await store.count_rows(model) == 0
        assert await store.ping()
    finally:
        await store.close()


async def test_a_second_start_on_the_same_database_keeps_its_rows(store_url: str) -> None:
    first = Store(store_url)
    await first.start()
    await first.record_exchange(exchange("r1"))
    await first.close()
    second = Store(store_url)
    await second.start()
    try:
        stored = await second.get_exchange("r1")
        assert stored is not None and stored.id == "r1"
    finally:
        await second.close()


def _stamp(url: str, revision: str) -> None:
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


async def _refusal_at(url: str, revision: str, config_hint: str) -> str:
    """What a store says at start on a database made at the head, then stamped ``revision``."""
    first = Store(url)
    await first.start()
    await first.close()
    await asyncio.to_thread(_stamp, url, revision)
    with pytest.raises(SchemaError) as info:
        await Store(url, config_hint=config_hint).start()
    return str(info.value)


async def test_an_older_revision_is_refused_naming_the_upgrade_command(fresh_url: str) -> None:
    message = await _refusal_at(fresh_url, "0002", "/etc/hitl/prod.toml")
    assert "0002" in message
    assert head_revision() in message
    assert "hitl db upgrade --config /etc/hitl/prod.toml" in message


async def test_a_revision_from_a_newer_version_is_refused_without_the_upgrade_advice(
    fresh_url: str,
) -> None:
    assert await _refusal_at(fresh_url, "0099", "prod.toml") == (
        f"the database is at schema revision 0099, which this version of hitl-gateway does "
        f"not know (it needs {head_revision()}; a newer version migrated the database): run "
        "that version here too"
    )


# -- exchanges ---------------------------------------------------------------------


async def test_record_exchange_round_trips(store: Store) -> None:
    row = exchange("r1", end_user="alice", reply_text="x" * 10_000, stream=True, confidence=0.25)
    await store.record_exchange(row)
    stored = await store.get_exchange("r1")
    assert stored is not None
    for key in ("end_user", "reply_text", "stream", "confidence", "status", "features_json"):
        assert getattr(stored, key) == getattr(row, key)
    assert stored.values() == row.values()  # every column, as recorded
    assert await store.get_exchange("nope") is None


async def test_exchange_and_escalation_commit_together(store: Store) -> None:
    await store.record_exchange(exchange("r1", decision="escalate"), escalation("r1", hold=True))
    stored = await store.get_exchange("r1")
    assert stored is not None and stored.decision == "escalate"
    outbox = await store.escalation_for("r1")
    assert outbox is not None
    assert (outbox.state, outbox.hold) == ("pending", True)


async def test_a_failing_escalation_rolls_back_its_exchange(store: Store) -> None:
    bad = escalation("r1", created_at=None)  # NOT NULL
    with pytest.raises(StoreError):
        await store.record_exchange(exchange("r1"), bad)
    assert await store.get_exchange("r1") is None
    assert await store.count_rows(Escalation) == 0


async def test_recent_decisions_are_the_newest_served_ones_oldest_first(store: Store) -> None:
    from feedback_store.history import recent_decisions

    for i, (route, decision) in enumerate(
        [("chat", "deliver"), ("chat", "escalate"), ("replay", "escalate"), ("chat", "ask")]
    ):
        row = exchange(f"r{i}", route=route, decision=decision, confidence=i / 10, created_at=i)
        await store.record_exchange(row)
    assert await recent_decisions(store, 2) == [(0.1, "escalate", 1.0), (0.3, "ask", 3.0)]
    assert len(await recent_decisions(store, 10)) == 3  # the replayed one is left out


async def test_a_duplicate_reply_id_is_refused(store: Store) -> None:
    await store.record_exchange(exchange("r1", reply_text="first"))
    with pytest.raises(StoreError):
        await store.record_exchange(exchange("r1", reply_text="second"))
    stored = await store.get_exchange("r1")
    assert stored is not None and stored.reply_text == "first"


# -- votes and labels --------------------------------------------------------------


async def test_vote_create_then_update_appends_one_label(store: Store) -> None:
    await store.record_exchange(exchange("r1"))
    first = await vote(store, "r1", "up", comment="good")
    assert first.created and first.label_id is not None and first.previous_rating is None
    second = await vote(store, "r1", "down", reason="incorrect", correction="fixed")
    assert not second.created and second.label_id is None
    assert second.previous_rating == "up"
    third = await vote(store, "r1", "down", reason="tone")
    assert not third.created and third.previous_rating == "down"
    current = await store.feedback_for("r1")
    assert current is not None
    assert (current.rating, current.reason, current.changes) == ("down", "tone", 2)
    # The rating and reason are the last vote's; the words written earlier stay.
    assert (current.comment, current.correction) == ("good", "fixed")
    assert await store.count_rows(Feedback) == 1
    labels = await store.labels_after(0)
    assert [(label.reply_id, label.value, label.source) for label in labels] == [("r1", 1, "user")]


async def test_a_later_vote_replaces_words_only_with_new_words(store: Store) -> None:
    await store.record_exchange(exchange("r1"))
    await vote(store, "r1", "down", reason="incorrect")
    await vote(store, "r1", "down", comment="the address is wrong")
    await vote(store, "r1", "down")  # the same thumb clicked again
    current = await store.feedback_for("r1")
    assert current is not None
    assert (current.rating, current.reason, current.comment) == (
        "down",
        "incorrect",
        "the address is wrong",
    )
    await vote(store, "r1", "down", comment="and the date", correction="12 May")
    await vote(store, "r1", "up")  # a changed mind: the down vote's reason goes with it
    current = await store.feedback_for("r1")
    assert current is not None
    assert (current.rating, current.reason, current.comment, current.correction) == (
        "up",
        None,
        "and the date",
        "12 May",
    )
    assert current.changes == 4


async def test_a_second_voter_is_a_new_vote_but_not_a_new_label(store: Store) -> None:
    await store.record_exchange(exchange("r1"))
    assert (await vote(store, "r1", "up", voter="user:alice")).created
    bob = await vote(store, "r1", "down", voter="user:bob")
    assert bob.created and bob.label_id is None
    assert await store.count_rows(Feedback) == 2
    assert await store.count_rows(Label) == 1


async def test_a_vote_on_an_unknown_reply_stores_nothing(store: Store) -> None:
    result = await vote(store, "never-recorded")
    assert not result.found and not result.created and result.label_id is None
    assert await store.count_rows(Feedback) == 0
    assert await store.count_rows(Label) == 0


async def test_labels_after_is_in_commit_order_with_the_stored_prediction(store: Store) -> None:
    for i in range(5):
        await store.record_exchange(
            exchange(
                f"r{i}", confidence=i / 10, features_json=json.dumps({"i": i}), end_user=f"u{i}"
            )
        )
    for i in (3, 1, 4):
        await vote(store, f"r{i}", "up" if i != 1 else "down")
    labels = await store.labels_after(0)
    assert [label.reply_id for label in labels] == ["r3", "r1", "r4"]
    assert [label.value for label in labels] == [1, 0, 1]
    ids = [label.id for label in labels]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [label.confidence for label in labels] == [pytest.approx(0.3), 0.1, 0.4]
    assert json.loads(labels[0].features_json) == {"i": 3}
    assert labels[0].end_user == "u3"
    assert [label.reply_id for label in await store.labels_after(ids[0])] == ["r1", "r4"]
    assert [label.reply_id for label in await store.labels_after(0, limit=2)] == ["r3", "r1"]
    assert await store.labels_after(ids[-1]) == []


# -- snapshots, events, values -----------------------------------------------------


async def test_snapshots_keep_the_newest(store: Store) -> None:
    assert await store.latest_snapshot() is None
    for i in range(1, 6):
        await store.save_snapshot(f"model {i}".encode(), last_label_id=i, labels=10 * i)
    latest = await store.latest_snapshot()
    assert latest is not None
    assert (latest.blob, latest.last_label_id, latest.labels) == (b"model 5", 5, 50)
    assert await store.count_rows(ModelSnapshot) == 3


async def test_events_in_order_and_by_kind(store: Store) -> None:
    await store.add_event("drift", {"n": 1}, at=100.0)
    await store.add_event("startup", {})
    await store.add_event("drift", {"n": 2})
    assert [e.kind for e in await store.events()] == ["drift", "startup", "drift"]
    drifts = await store.events("drift")
    assert [json.loads(e.data_json) for e in drifts] == [{"n": 1}, {"n": 2}]
    assert drifts[0].created_at == 100.0
    assert await store.events("nothing") == []


async def test_get_or_create_value_is_stable(store: Store) -> None:
    assert await store.get_or_create_value("k", lambda: "first") == "first"

    def never() -> str:
        raise AssertionError("the factory runs only when the key is missing")

    assert await store.get_or_create_value("k", never) == "first"

    def factory(i: int) -> Callable[[], str]:
        return lambda: f"v{i}"

    values = await asyncio.gather(
        *(store.get_or_create_value("shared", factory(i)) for i in range(10))
    )
    assert len(set(values)) == 1
    assert await store.get_or_create_value("shared", never) == values[0]


async def test_get_or_create_value_survives_a_restart(store_url: str) -> None:
    first = Store(store_url)
    await first.start()
    value = await first.get_or_create_value("secret", lambda: "kept")
    await first.close()
    second = Store(store_url)
    await second.start()
    try:
        assert await second.get_or_create_value("secret", lambda: "new") == value == "kept"
    finally:
        await second.close()


# -- the writer --------------------------------------------------------------------


async def test_concurrent_writes_are_all_committed(store: Store) -> None:
    await asyncio.gather(*(store.record_exchange(exchange(f"r{i}")) for i in range(200)))
    assert await store.count_rows(Exchange) == 200
    await asyncio.gather(*(vote(store, f"r{i}", "up" if i % 2 else "down") for i in range(200)))
    assert await store.count_rows(Feedback) == 200
    labels = await store.labels_after(0, limit=1000)
    assert len(labels) == 200
    assert sum(label.value for label in labels) == 100


async def test_writes_waiting_together_share_one_transaction(store: Store) -> None:
    # Each job returns its connection (kept alive here, so identities can't be reused).
    def job(conn: Connection) -> Connection:
        return conn

    connections = await asyncio.gather(*(store.write(job) for _ in range(50)))
    assert len({id(conn) for conn in connections}) < 50


async def test_a_failing_job_in_a_batch_fails_only_itself(store: Store) -> None:
    await store.record_exchange(exchange("taken"))

    def broken(conn: Connection) -> None:
        raise ValueError("a bug in one job")

    results = await asyncio.gather(
        *(store.record_exchange(exchange(f"ok{i}")) for i in range(5)),
        store.record_exchange(exchange("taken")),
        store.write(broken),
        *(store.record_exchange(exchange(f"ok{i}")) for i in range(5, 10)),
        return_exceptions=True,
    )
    assert results[:5] == [None] * 5 and results[7:] == [None] * 5
    assert isinstance(results[5], StoreError)
    assert isinstance(results[6], ValueError)
    assert await store.count_rows(Exchange) == 11
    for i in range(10):
        assert await store.get_exchange(f"ok{i}") is not None


# -- gauges and errors -------------------------------------------------------------


async def test_gauges_and_counts_of_an_empty_store(store: Store) -> None:
    gauges = await store.gauges(auc_window=10)
    assert (gauges.unposted, gauges.posted, gauges.failed) == (0, 0, 0)
    assert gauges.oldest_unposted_at is None and gauges.newest_label_id is None
    assert gauges.recent_roc_auc is None
    assert await store.review_counts() == ReviewCounts()


async def test_gauges_count_the_outbox_and_judge_the_newest_labels(store: Store) -> None:
    for i, (confidence, rating) in enumerate([(0.9, "up"), (0.2, "down"), (0.6, "up")]):
        await store.record_exchange(
            exchange(f"r{i}", confidence=confidence), escalation(f"r{i}", created_at=10.0 + i)
        )
        await vote(store, f"r{i}", rating)
    await store.mark_posted(1, channel="C1", ts="1.1", now=20.0)
    gauges = await store.gauges(auc_window=2)
    assert (gauges.unposted, gauges.posted, gauges.failed) == (2, 1, 0)
    assert gauges.oldest_unposted_at == 11.0
    labels = await store.labels_after(0)
    assert gauges.newest_label_id == labels[-1].id
    assert gauges.recent_roc_auc == 1.0  # r2 (up, 0.6) above r1 (down, 0.2)
    assert (await store.review_counts()).pending == 2


async def test_database_errors_become_store_errors_that_say_what_to_do(store: Store) -> None:
    with pytest.raises(StoreError) as read:
        await store.read(lambda conn: conn.execute(text("SELECT * FROM no_such_table")).all())
    assert "could not be read" in str(read.value) and "hitl db upgrade" in str(read.value)
    await store.get_or_create_value("secret", lambda: "kept")

    def clash(conn: Connection) -> None:
        conn.execute(text("INSERT INTO keyvalue (key, value) VALUES ('secret', 'hunter2')"))

    with pytest.raises(StoreError) as write:
        await store.write(clash)
    message = str(write.value)
    assert "refused a write" in message and "nothing of that write was stored" in message
    # The statement and its parameters (users' text, secrets) stay out of the message.
    assert "hunter2" not in message and "INSERT" not in message
    assert message.count("\n") == 0


async def test_an_unreachable_database_is_a_store_error_without_the_password() -> None:
    store = Store("postgresql+psycopg://hitl:s3cret-pw@127.0.0.1:1/nothing")
    with pytest.raises(StoreError) as info:
        await store.start()
    message = str(info.value)
    assert message.startswith("the database at postgresql+psycopg://hitl:***@127.0.0.1:1/nothing")
    assert "could not be opened" in message and "[store] url" in message
    assert "s3cret-pw" not in message


# -- several reviewers (votes), holds' releases, announcements ----------------------------

STATE_OF_VERDICT = {"approve": "approved", "reject": "rejected", "correct": "corrected"}


async def review(
    store: Store,
    reply_id: str,
    reviewer: str,
    verdict: str,
    *,
    required: int = 1,
    reason: str | None = None,
    correction: str | None = None,
    at: float | None = None,
) -> Any:
    """One reviewer's vote, as the decision flow sends it."""
    return await store.record_review(
        reply_id=reply_id,
        state=STATE_OF_VERDICT[verdict],
        reviewer=reviewer,
        reason=reason,
        correction=correction,
        value=1 if verdict == "approve" else 0,
        weight=3.0,
        now=time.time() if at is None else at,
        votes_required=required,
    )


async def posted_item(store: Store, reply_id: str) -> int:
    """An escalated reply whose card is in the channel; its escalation id."""
    await store.record_exchange(exchange(reply_id, decision="escalate"), escalation(reply_id))
    row = await store.escalation_for(reply_id)
    assert row is not None
    await store.mark_posted(row.id, channel="C1", ts=f"ts-{reply_id}", now=time.time())
    await store.mark_card_current(row.id)
    return row.id


async def test_one_vote_decides_when_one_is_required(store: Store) -> None:
    await store.record_exchange(exchange("r1"))
    result = await review(store, "r1", "U1", "correct", reason="incorrect", correction="Fixed.")
    assert result.applied and result.decided and result.label_id is not None
    row = result.escalation
    assert (row.state, row.trigger, row.decided_by, row.correction) == (
        "corrected",
        "api",
        "U1",
        "Fixed.",
    )
    assert row.decision_reason == "incorrect" and not row.card_stale
    assert [(v.reviewer, v.verdict, v.correction) for v in result.votes] == [
        ("U1", "correct", "Fixed.")
    ]
    assert await store.review_votes("r1") == list(result.votes)
    late = await review(store, "r1", "U2", "approve")
    assert not late.applied and not late.decided and late.label_id is None
    assert late.escalation.state == "corrected" and len(late.votes) == 1


async def test_two_agreeing_reviewers_decide_on_the_second_vote(store: Store) -> None:
    await posted_item(store, "r1")
    first = await review(store, "r1", "U1", "approve", required=2, at=100.0)
    assert first.applied and not first.decided and first.label_id is not None
    assert first.escalation.state == "posted" and first.escalation.decided_by is None
    # The card in the channel is redrawn with the tally.
    assert first.escalation.card_stale and first.escalation.next_attempt_at == 100.0
    second = await review(store, "r1", "U2", "approve", required=2, at=110.0)
    assert second.applied and second.decided
    row = second.escalation
    assert (row.state, row.decided_by, row.decided_at, row.card_stale) == (
        "approved",
        "U2",
        110.0,
        True,
    )
    assert [v.reviewer for v in second.votes] == ["U1", "U2"]
    labels = await store.labels_after(0)
    assert [(lb.source, lb.value, lb.weight) for lb in labels] == [("reviewer", 1, 3.0)] * 2


async def test_disagreeing_reviewers_wait_for_a_third(store: Store) -> None:
    await store.record_exchange(exchange("r1", decision="escalate"), escalation("r1"))
    approve = await review(store, "r1", "U1", "approve", required=2, at=100.0)
    reject = await review(store, "r1", "U2", "reject", required=2, reason="tone", at=101.0)
    assert approve.applied and reject.applied and not approve.decided and not reject.decided
    assert reject.escalation.state == "pending" and not reject.escalation.card_stale
    third = await review(store, "r1", "U3", "reject", required=2, reason="incorrect", at=102.0)
    assert third.decided
    row = third.escalation
    assert (row.state, row.decided_by, row.decision_reason) == ("rejected", "U3", "incorrect")
    assert row.correction is None
    assert [(v.reviewer, v.verdict) for v in third.votes] == [
        ("U1", "approve"),
        ("U2", "reject"),
        ("U3", "reject"),
    ]
    assert [lb.value for lb in await store.labels_after(0)] == [1, 0, 0]


async def test_a_correction_on_the_reject_side_corrects_with_the_first_correction(
    store: Store,
) -> None:
    await store.record_exchange(exchange("r1", decision="escalate"), escalation("r1"))
    votes = [
        ("U1", "correct", "incomplete", "First fix.", 100.0),
        ("U2", "approve", None, None, 101.0),
        ("U3", "correct", None, "Second fix.", 102.0),
    ]
    for reviewer, verdict, reason, correction, at in votes:
        result = await review(
            store, "r1", reviewer, verdict, required=3, reason=reason, correction=correction, at=at
        )
        assert result.applied and not result.decided
    last = await review(store, "r1", "U4", "reject", required=3, reason="incorrect", at=103.0)
    assert last.decided
    row = last.escalation
    assert (row.state, row.decided_by, row.correction) == ("corrected", "U4", "First fix.")
    # The reason of the vote whose correction is used.
    assert row.decision_reason == "incomplete"
    assert await store.count_rows(Label) == 4


async def test_the_same_reviewer_votes_once(store: Store) -> None:
    await store.record_exchange(exchange("r1", decision="escalate"), escalation("r1"))
    first = await review(store, "r1", "U1", "approve", required=2)
    again = await review(store, "r1", "U1", "reject", required=2, reason="tone")
    assert first.applied and not again.applied and again.label_id is None
    assert not again.decided and again.escalation.state == "pending"
    assert [(v.reviewer, v.verdict) for v in again.votes] == [("U1", "approve")]
    assert await store.count_rows(Label) == 1
    assert await store.count_rows(ReviewVote) == 1


async def test_a_duplicate_vote_is_refused_without_spoiling_the_transaction(store: Store) -> None:
    """The unique constraint, the backstop behind the lock: refused in a savepoint, so the
    rest of the job (and of the jobs grouped with it) still commits, PostgreSQL too."""
    from feedback_store.reviews import Ballot, insert_vote

    await store.record_exchange(exchange("r1"), escalation("r1"))
    row = await store.escalation_for("r1")
    assert row is not None
    ballot = Ballot(
        reviewer="U1", verdict="approve", reason=None, correction=None, value=1, weight=1.0, at=1.0
    )

    def job(conn: Connection) -> tuple[bool, bool]:
        first = insert_vote(conn, row.id, "r1", ballot)
        second = insert_vote(conn, row.id, "r1", ballot)
        conn.execute(text("UPDATE escalation SET attempts = 7"))
        return first, second

    assert await store.write(job) == (True, False)
    assert await store.count_rows(ReviewVote) == 1
    after = await store.escalation_for("r1")
    assert after is not None and after.attempts == 7

    def failing(conn: Connection) -> None:
        assert insert_vote(conn, row.id, "r1", dataclasses.replace(ballot, reviewer="U2"))
        raise ValueError("a bug after the vote")

    with pytest.raises(ValueError):
        await store.write(failing)
    assert await store.count_rows(ReviewVote) == 1  # the vote went with its transaction


async def test_concurrent_votes_from_two_processes_never_decide_twice(store_url: str) -> None:
    """Two stores (two engines, two writers: two gateways) on one database."""
    stores = [Store(store_url), Store(store_url)]
    for s in stores:
        await s.start()
    try:
        rounds = 6
        for i in range(rounds):
            await stores[0].record_exchange(exchange(f"r{i}"), escalation(f"r{i}"))
        results = await asyncio.gather(
            *(
                review(stores[n % 2], f"r{i}", f"U{n}", "approve", required=2)
                for i in range(rounds)
                for n in range(4)
            )
        )
        for i in range(rounds):
            mine = results[4 * i : 4 * i + 4]
            assert sum(r.decided for r in mine) == 1
            assert sum(r.applied for r in mine) == 2  # the two after the decision: refused
            votes = await stores[0].review_votes(f"r{i}")
            assert len(votes) == 2
            row = await stores[0].escalation_for(f"r{i}")
            assert row is not None and row.state == "approved"
            assert row.decided_by == votes[-1].reviewer
        assert await stores[0].count_rows(Label) == 2 * rounds
        # One reviewer clicking twice, in both processes at once: one vote.
        await stores[0].record_exchange(exchange("twice"), escalation("twice"))
        twice = await asyncio.gather(
            *(review(stores[n % 2], "twice", "U1", "approve", required=2) for n in range(6))
        )
        assert sum(r.applied for r in twice) == 1
        assert len(await stores[1].review_votes("twice")) == 1
    finally:
        for s in stores:
            await s.close()


async def test_record_release_keeps_the_first_release(store: Store) -> None:
    await store.record_release("nothing-here", released="fallback", at=1.0, timed_out=True)
    await store.record_exchange(exchange("r1", decision="hold"), escalation("r1", hold=True))
    row = await store.escalation_for("r1")
    assert row is not None and (row.released, row.released_at, row.timed_out) == (
        None,
        None,
        False,
    )
    await store.record_release("r1", released="fallback", at=50.0, timed_out=True)
    await store.record_release("r1", released="original", at=60.0, timed_out=False)
    row = await store.escalation_for("r1")
    assert row is not None
    assert (row.released, row.released_at, row.timed_out) == ("fallback", 50.0, True)
    with pytest.raises(ValueError):
        await store.record_release("r1", released="everything", at=1.0, timed_out=False)


async def test_announcements_are_claimed_once(store: Store) -> None:
    await store.add_event("drift", {"n": 1}, at=10.0)
    await store.add_event("startup", {}, at=11.0)
    claimed, again = await asyncio.gather(
        store.claim_announcements("drift", now=20.0), store.claim_announcements("drift", now=21.0)
    )
    assert [json.loads(e.data_json) for e in claimed + again] == [{"n": 1}]
    assert (claimed + again)[0].announced_at in (20.0, 21.0)
    await store.unclaim_announcement((claimed + again)[0].id)
    assert len(await store.claim_announcements("drift", now=30.0)) == 1
    assert await store.claim_announcements("drift", now=31.0) == []
    assert [e.announced_at for e in await store.events("drift")] == [30.0]


# -- schema revisions 0002 and 0003 ------------------------------------------------------


def _schema_drift(url: str) -> list[Any]:
    """What the migrations' schema lacks or has beyond the tables (autogenerate's diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))
    finally:
        engine.dispose()


async def test_the_migrations_make_exactly_the_tables(fresh_url: str) -> None:
    from feedback_store import upgrade

    assert await asyncio.to_thread(upgrade, fresh_url) == head_revision() == "0005"
    assert await asyncio.to_thread(_schema_drift, fresh_url) == []


def _fill_at_0001(url: str) -> None:
    from alembic import command

    from feedback_store.schema import alembic_config

    command.upgrade(alembic_config(url), "0001")
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            for row in ("a", "b"):
                conn.execute(
                    text(
                        "INSERT INTO exchange (id, created_at, model, route, stream, request_json,"
                        " question, reply_text, status, upstream_status, upstream_ms, total_ms,"
                        " confidence, decision, ask_feedback, outlier, features_json,"
                        " reasons_json, meta_json) VALUES (:id, 1.0, 'm', 'chat', false, '{}',"
                        " 'q?', 'an answer', 'complete', 200, 1.0, 2.0, 0.3, 'escalate', false,"
                        " false, '{}', '[]', '{}')"
                    ),
                    {"id": row},
                )
            conn.execute(
                text(
                    "INSERT INTO escalation (reply_id, state, hold, trigger, created_at, attempts,"
                    " next_attempt_at, decided_by, decided_at, decision_reason, correction,"
                    " card_stale) VALUES"
                    " ('a', 'corrected', true, 'policy', 5.0, 1, 5.0, 'U1', 9.0, 'incorrect',"
                    " 'Better.', false),"
                    " ('b', 'posted', false, 'policy', 6.0, 1, 6.0, null, null, null, null, false)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO label (reply_id, source, value, weight, created_at)"
                    " VALUES ('a', 'reviewer', 0, 3.0, 9.0)"
                )
            )
            conn.execute(
                text("INSERT INTO event (created_at, kind, data_json) VALUES (7.0, 'drift', '{}')")
            )
    finally:
        engine.dispose()


async def test_upgrading_a_0001_database_keeps_its_rows(fresh_url: str) -> None:
    from feedback_store import upgrade

    await asyncio.to_thread(_fill_at_0001, fresh_url)
    assert await asyncio.to_thread(current_revision, fresh_url) == "0001"
    refused = Store(fresh_url, config_hint="test.toml")
    with pytest.raises(SchemaError):
        await refused.start()
    assert await asyncio.to_thread(upgrade, fresh_url) == "0005"
    assert await asyncio.to_thread(_schema_drift, fresh_url) == []
    store = Store(fresh_url)
    await store.start()
    try:
        assert (await store.count_rows(Exchange), await store.count_rows(Label)) == (2, 1)
        old = await store.escalation_for("a")
        assert old is not None
        assert (old.state, old.hold, old.decided_by, old.correction) == (
            "corrected",
            True,
            "U1",
            "Better.",
        )
        assert (old.released, old.released_at, old.timed_out) == (None, None, False)
        # The decision taken before votes existed is the vote that took it.
        (vote_row,) = await store.review_votes("a")
        assert (vote_row.reviewer, vote_row.verdict, vote_row.reason, vote_row.created_at) == (
            "U1",
            "correct",
            "incorrect",
            9.0,
        )
        assert vote_row.correction == "Better." and vote_row.escalation_id == old.id
        assert await store.review_votes("b") == []
        # Old drift is history: not announced again.
        assert [e.announced_at for e in await store.events("drift")] == [7.0]
        assert await store.claim_announcements("drift", now=10.0) == []
        # The upgraded database takes votes and releases.
        result = await review(store, "b", "U2", "approve", required=2)
        assert result.applied and not result.decided
        await store.record_release("a", released="correction", at=12.0, timed_out=False)
        row = await store.escalation_for("a")
        assert row is not None and row.released == "correction"
    finally:
        await store.close()


def test_processes_starting_together_on_an_empty_postgres_migrate_once(postgres_url: str) -> None:
    """A fleet's processes start at once on a new database: one migrates, the others
    wait for it and find the schema current."""
    import concurrent.futures

    from feedback_store import current_revision, ensure_schema, head_revision

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(ensure_schema, postgres_url) for _ in range(4)]
        for run in runs:
            run.result(timeout=60)
    assert current_revision(postgres_url) == head_revision()
