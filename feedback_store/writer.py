"""The one writer: every write job of a process, grouped into as few commits as it can.

Writes are *jobs* (``def job(conn: Connection) -> result``, plain synchronous code)
queued to a single writer. The writer takes every job waiting in the queue, runs them
in one transaction on its own thread and commits once (group commit), then resolves
each job's future on the event loop. A caller's ``await`` returns only after its job
is durable, so a 2xx is never sent for something not yet committed. If a grouped
transaction fails, the writer rolls back and reruns each job alone, so one bad job
fails only its own caller.

A job that fails resolves its future with its own exception, untouched: the store's
facade maps database errors once, at its edge (``engine.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

T = TypeVar("T")
Job = Callable[[Connection], Any]


class Inserts:
    """A write job that only inserts rows: the writer batches these into executemany."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[tuple[Any, dict[str, Any]]]) -> None:
        self.rows = rows

    def __call__(self, conn: Connection) -> None:
        for statement, row in self.rows:
            conn.execute(statement, row)


def broken(exc: BaseException) -> bool:
    """Whether the connection itself failed (then the writer opens a new one)."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


class Writer:
    def __init__(self, engine: Engine, *, commit_batch: int, threaded: bool) -> None:
        """``threaded=False`` runs each job at once on the event loop, alone: for stores
        with no fsync to wait for, where two thread hops cost more than the statements."""
        self.engine = engine
        self.commit_batch = commit_batch
        self.threaded = threaded
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hitl-store-writer")
        self._task: asyncio.Task[None] | None = asyncio.create_task(
            self._loop(), name="hitl-store-writer"
        )
        self._conn: Connection | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, job: Callable[[Connection], T]) -> T:
        """Run ``job(conn)`` in the next transaction; return once it is committed."""
        if not self.threaded:
            ((ok, value),) = self._run_batch([job])
            if ok:
                return value
            raise value
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            # Let queued jobs finish: they were promised durability.
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._thread.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.commit_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                live = [(job, fut) for job, fut in batch if not fut.cancelled()]
                if live:
                    jobs = [job for job, _ in live]
                    outcomes = await loop.run_in_executor(self._thread, self._run_batch, jobs)
                    for (_, fut), (ok, value) in zip(live, outcomes, strict=True):
                        if fut.done():
                            continue
                        if ok:
                            fut.set_result(value)
                        else:
                            fut.set_exception(value)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _connection(self) -> Connection:
        """The writer's own connection, kept open: checking one out of the pool and
        resetting it on return costs more than a small transaction."""
        if self._conn is None or self._conn.closed:
            self._conn = self.engine.connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def _run_batch(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        """On the writer thread: all jobs in one transaction, else each alone.

        Plain inserts (``Inserts`` jobs, one per recorded exchange) go first, one
        executemany per statement for the whole batch; nothing else in a batch can
        depend on them, since their ids reach clients only after this commit.
        """
        try:
            conn = self._connection()
            with conn.begin():
                grouped: dict[Any, list[dict[str, Any]]] = {}
                for job in jobs:
                    if isinstance(job, Inserts):
                        for statement, row in job.rows:
                            grouped.setdefault(statement, []).append(row)
                for statement, rows in grouped.items():
                    conn.execute(statement, rows)
                results = [None if isinstance(job, Inserts) else job(conn) for job in jobs]
            return [(True, result) for result in results]
        except Exception as exc:
            if broken(exc):
                self._drop_connection()
        return [self._run_alone(job) for job in jobs]

    def _run_alone(self, job: Job) -> tuple[bool, Any]:
        try:
            conn = self._connection()
            with conn.begin():
                return True, job(conn)
        except Exception as exc:
            if broken(exc):
                self._drop_connection()
            return False, exc
