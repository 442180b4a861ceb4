"""One learner for a fleet: the PostgreSQL advisory lock picks it, the others follow its
published snapshots, and one takes over when it goes, learning every label exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from feedback_store import Store
from feedback_store.leadership import (
    LEARNER_LOCK,
    AdvisoryLock,
    NeverLeader,
    SoleLeader,
    leadership_for,
)
from middleware.learning.brain import Brain
from middleware.learning.learner import Learner
from tests.learning.test_learning import _label, _x


@pytest.fixture
async def two_stores(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one PostgreSQL database, as two processes would hold."""
    first, second = Store(postgres_url), Store(postgres_url)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


def fleet_learner(store: Store, **kwargs: float) -> Learner:
    return Learner(
        store, Brain(), leadership=AdvisoryLock(store), publish_s=0.0001, lead_check_s=0, **kwargs
    )


async def label_count(store: Store) -> int:
    return int(
        await store.read(lambda conn: conn.execute(text("SELECT count(*) FROM label")).scalar())
    )


async def test_exactly_one_of_two_learners_leads(two_stores: tuple[Store, Store]) -> None:
    a, b = fleet_learner(two_stores[0]), fleet_learner(two_stores[1])
    await a.begin()
    await b.begin()
    assert (a.leading, b.leading) == (True, False)
    # Asking again changes nothing: the lock stays with its holder.
    await a.tick()
    await b.tick()
    assert (a.leading, b.leading) == (True, False)
    await a.close()
    await b.close()


async def test_followers_serve_what_the_leader_published(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    leader, follower = fleet_learner(first), fleet_learner(second)
    await leader.begin()
    await follower.begin()
    await _label(first, range(40))
    await leader.tick()  # learns the 40 labels and publishes them
    assert leader.brain.labels == 40
    assert follower.brain.labels == 0
    await follower.tick()
    assert follower.brain.labels == 40
    assert follower.brain.last_label_id == leader.brain.last_label_id
    assert follower.brain.predict(_x(3)) == pytest.approx(leader.brain.predict(_x(3)), abs=1e-12)
    await leader.close()
    await follower.close()


async def test_a_follower_keeps_its_own_outlier_detector() -> None:
    mine, theirs = Brain(), Brain()
    mine.is_outlier({"reply_words": 3.0})
    mine.absorb_unlabelled()
    detector = mine.detector
    theirs.labels = 7
    mine.adopt(Brain.from_bytes(theirs.to_bytes()))
    assert mine.labels == 7
    assert mine.detector is detector
    assert len(mine.anomaly_scores) == 1


async def test_when_the_leader_goes_another_takes_over_and_learns_each_label_once(
    two_stores: tuple[Store, Store],
) -> None:
    first, second = two_stores
    leader, standby = fleet_learner(first), fleet_learner(second)
    await leader.begin()
    await standby.begin()
    await _label(first, range(30))
    await leader.tick()
    # Labels the leader commits but never learns or publishes before it goes.
    await _label(first, range(30, 50))
    await leader.leadership.release()  # as its session ending (kill -9) would
    leader.leading = False
    await standby.tick()
    assert standby.leading
    assert standby.brain.labels == await label_count(second) == 50
    assert standby.brain.progress.count == 50
    # Its first act was to publish what it learned, for the followers.
    newest = await second.latest_snapshot()
    assert newest is not None and newest.labels == 50
    await standby.close()


async def test_a_lost_lock_connection_means_not_leading_then_leading_again(
    two_stores: tuple[Store, Store],
) -> None:
    store = two_stores[0]
    lock = AdvisoryLock(store)
    assert await lock.hold()
    held = lock._conn
    assert held is not None
    # The database ends the session (a restart, an administrator): the lock is gone.
    await two_stores[1].read(
        lambda conn: conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND objid = :low AND classid = :high "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"low": LEARNER_LOCK & 0xFFFFFFFF, "high": LEARNER_LOCK >> 32},
        ).all()
    )
    assert await lock.hold() is False
    assert await lock.hold() is True
    await lock.release()


def test_who_may_lead() -> None:
    sqlite = Store("sqlite:///x.db")
    postgres = Store("postgresql+psycopg://u@127.0.0.1/db")
    assert isinstance(leadership_for(sqlite), SoleLeader)
    assert isinstance(leadership_for(postgres), AdvisoryLock)
    assert isinstance(leadership_for(postgres, learns=False), NeverLeader)
    assert isinstance(leadership_for(sqlite, learns=False), NeverLeader)


async def test_a_serving_only_learner_never_learns(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    leader = fleet_learner(first)
    server = Learner(second, Brain(), leadership=NeverLeader())
    await leader.begin()
    await server.begin()
    await _label(first, range(10))
    await leader.close()  # gone, and the lock with it
    await server.tick()
    assert not server.leading
    # It serves the snapshot the leader wrote as it closed; it learned nothing itself.
    assert server.brain.labels == 10
    assert server.follower.snapshot_id is not None
    await server.close()


async def test_a_label_committed_after_a_later_one_is_still_learned(
    two_stores: tuple[Store, Store], postgres_url: str
) -> None:
    """Two writers: label n is inserted first but commits after label n+1. The learner
    waits at the gap instead of passing n by; a gap that stays open (a rolled-back vote)
    is passed once it is older than the grace period."""
    import time

    from sqlalchemy import create_engine

    first, _ = two_stores
    await _label(first, range(3))  # the exchanges e0..e2, and labels 1..3
    clock = [time.time()]
    learner = Learner(first, Brain(), clock=lambda: clock[0], gap_grace_s=10.0)
    assert await learner.step() == 3

    insert = text(
        "INSERT INTO label (reply_id, source, value, weight, created_at) "
        "VALUES (:r, 'reviewer', 1, 3.0, :at) RETURNING id"
    )
    engine = create_engine(postgres_url)
    try:
        slow, fast = engine.connect(), engine.connect()
        slow_tx = slow.begin()
        slow_id = slow.execute(insert, {"r": "e0", "at": clock[0]}).scalar()
        with fast.begin():
            fast_id = fast.execute(insert, {"r": "e1", "at": clock[0]}).scalar()
        assert (slow_id, fast_id) == (4, 5)
        assert await learner.step() == 0  # 5 is visible, 4 is not yet: wait
        assert learner.brain.last_label_id == 3
        slow_tx.commit()
        assert await learner.step() == 2
        assert learner.brain.last_label_id == 5 and learner.brain.labels == 5

        # A vote that rolls back leaves id 6 unused for good.
        rolled = slow.begin()
        assert slow.execute(insert, {"r": "e2", "at": clock[0]}).scalar() == 6
        with fast.begin():
            assert fast.execute(insert, {"r": "e2", "at": clock[0]}).scalar() == 7
        rolled.rollback()
        assert await learner.step() == 0  # could still be committing
        clock[0] += 11.0
        assert await learner.step() == 1  # no: it is gone; go on past it
        assert learner.brain.last_label_id == 7 and learner.brain.labels == 6
        slow.close()
        fast.close()
    finally:
        engine.dispose()
