"""One battery of store tests, run over SQLite and PostgreSQL alike.

PostgreSQL cases need ``$HITL_TEST_POSTGRES_URL`` (a server URL) and skip with that
reason when it is unset. The run creates its own database (``hitl_test_<random>``,
emptied before each test, dropped at the end); schema tests get a database each.
"""

from __future__ import annotations

import asyncio
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
        for model in (Exchange, Feedback, Label, Escalation, ModelSnapshot, Event, KeyValue):
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


async def test_an_older_revision_is_refused_naming_the_upgrade_command(fresh_url: str) -> None:
    store_url = fresh_url
    first = Store(store_url)
    await first.start()
    await first.close()
    await asyncio.to_thread(_stamp, store_url, "0000")
    outdated = Store(store_url, config_hint="/etc/hitl/prod.toml")
    with pytest.raises(SchemaError) as info:
        await outdated.start()
    message = str(info.value)
    assert "0000" in message
    assert head_revision() in message
    assert "hitl db upgrade --config /etc/hitl/prod.toml" in message


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
    assert current.correction is None  # last vote wins, whole
    assert await store.count_rows(Feedback) == 1
    labels = await store.labels_after(0)
    assert [(label.reply_id, label.value, label.source) for label in labels] == [("r1", 1, "user")]


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
