"""Real fleet processes for fault tests, and traffic to drive them.

- ``start_serve`` / ``serving``: ``hitl serve`` from a config text, one process or
  ``--workers N`` (with or without its learner), up before it returns; ``start_learner``:
  ``hitl learner`` alone. Each runs in a process group of its own, so ``stop`` leaves no
  worker or learner behind, whatever happened to the parent.
- ``ServeProcess.serving_pids``: the processes that hold the listening socket (the
  workers of a fleet; the process itself when it serves alone); ``connections`` counts
  the client connections one of them holds, so a test can kill a worker that is busy.
- ``make_replies``: replies (id and feedback token) made in bulk, concurrently;
  ``VoteBurst``: votes on them at a given concurrency, every outcome kept, votes on one
  reply strictly one after the other; ``vote_problems`` compares what was acknowledged
  with what the store holds (``stored_votes``).

A fresh PostgreSQL database for one test is conftest's ``postgres_url`` fixture (a unique
name on ``$HITL_TEST_POSTGRES_URL``'s server, dropped afterwards); a cluster of a test's
own, to stop and start, is ``tests.support.private_postgres``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import sqlalchemy
import sqlalchemy.pool

from feedback_store.urls import sync_url
from tests.support import private_postgres
from tests.support.private_postgres import PrivateCluster
from tests.support.processes import GatewayProcess, clean_env, free_port
from tests.support.waiting import wait_for

__all__ = [
    "LearnerProcess",
    "Reply",
    "ServeProcess",
    "StoredVote",
    "VoteBurst",
    "VoteOutcome",
    "healthz",
    "labels_learned",
    "labels_per_reply",
    "make_replies",
    "pg_ctl_stop",
    "query",
    "serving",
    "start_learner",
    "start_serve",
    "stored_votes",
    "vote_problems",
]

#: what uvicorn logs once per serving process whose app has started
STARTED_LINE = "Application startup complete."


def labels_learned(url: str) -> int:
    """``model.labels`` of ``/healthz`` (what the answering process serves), or -1 when
    it did not answer 200."""
    answer = healthz(url)
    return int(answer[1]["model"]["labels"]) if answer and answer[0] == 200 else -1


def healthz(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]] | None:
    """``GET /healthz``: its status and body, or None when nothing answered."""
    try:
        r = httpx.get(url + "/healthz", timeout=timeout)
    except httpx.TransportError:
        return None
    try:
        body = r.json()
    except ValueError:
        body = {}
    return r.status_code, body


# --- processes --------------------------------------------------------------------------


def _launch(
    directory: Path, config: str, args: Sequence[str], log: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    path = directory / "config.toml"
    path.write_text(config, encoding="utf-8")
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "middleware.cli", *args, "--config", str(path)],
            cwd=directory,
            env=clean_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers and learner with it
        )


def _log_path(directory: Path, name: str) -> Path:
    """``<name>.log``, or ``<name>-2.log``... when a process before it left its log."""
    path, n = directory / f"{name}.log", 1
    while path.exists():
        n += 1
        path = directory / f"{name}-{n}.log"
    return path


def _end_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Interrupt ``process`` (Ctrl-C) and wait; then kill whatever is left of its group."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # A parent killed with -9 leaves its children running; the group still names them.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in path.read_text().split()]
    return sorted(set(found))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _tcp_inodes(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets on local ``port`` in ``state`` (0A listening,
    01 established), from ``/proc/net/tcp`` and ``tcp6``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                    inodes.add(fields[9])
    return inodes


@dataclass
class ServeProcess(GatewayProcess):
    """A running ``hitl serve``: ``process`` is the parent (the only process when it serves
    alone), ``workers`` how many serving processes it was asked for."""

    workers: int = 1

    def serving_pids(self) -> list[int]:
        """The processes holding the listening socket: the workers of a fleet (not its
        learner, nor multiprocessing's resource tracker), or the process itself."""
        if self.workers == 1:
            return [self.process.pid] if self.process.poll() is None else []
        listening = _tcp_inodes(self.port, "0A")
        return [pid for pid in _children(self.process.pid) if _socket_inodes(pid) & listening]

    def connections(self, pid: int) -> int:
        """How many accepted connections on the port process ``pid`` holds."""
        return len(_socket_inodes(pid) & _tcp_inodes(self.port, "01"))

    def started(self) -> int:
        """How many serving processes have logged that their app started, so far."""
        return self.output().count(STARTED_LINE)

    def wait_ready(self, *, started: int | None = None, timeout: float = 60) -> None:
        """Wait for ``/healthz`` 200, ``workers`` serving processes, and at least
        ``started`` app start-ups logged (default: ``workers``)."""
        want = self.workers if started is None else started

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"hitl serve exited early:\n{self.output()}")
            answer = healthz(self.url, timeout=1)
            return (
                answer is not None
                and answer[0] == 200
                and len(self.serving_pids()) == self.workers
                and self.started() >= want
            )

        if not wait_for(ready, timeout=timeout):
            raise AssertionError(f"hitl serve did not come up in {timeout} s:\n{self.output()}")

    def kill(self, pid: int | None = None) -> None:
        """``kill -9`` one of its processes (default: the parent), and reap the parent."""
        os.kill(self.process.pid if pid is None else pid, signal.SIGKILL)
        if pid is None or pid == self.process.pid:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> str:
        """Ctrl-C, as a user would, then nothing of its group left; its output."""
        _end_group(self.process, timeout)
        return self.output()


def start_serve(
    directory: Path,
    config: str,
    *,
    workers: int = 1,
    learner: bool = True,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    wait: bool = True,
) -> ServeProcess:
    """``hitl serve --config <config> [--workers N] [--no-learner]`` in ``directory`` (its
    config file and logs live there), on ``port`` (default: a free one), ready
    (``ServeProcess.wait_ready``) when it returns, unless ``wait`` is False."""
    port = free_port() if port is None else port
    args = ["serve", "--port", str(port), "--workers", str(workers)]
    if not learner:
        args.append("--no-learner")
    log = _log_path(directory, "serve")
    gateway = ServeProcess(
        _launch(directory, config, args, log, env or {}), port, log, workers=workers
    )
    try:
        if wait:
            gateway.wait_ready(timeout=timeout)
    except BaseException:
        gateway.stop()
        raise
    return gateway


@contextlib.contextmanager
def serving(directory: Path, config: str, **options: Any) -> Iterator[ServeProcess]:
    """``start_serve(directory, config, **options)``, stopped after the body."""
    gateway = start_serve(directory, config, **options)
    try:
        yield gateway
    finally:
        gateway.stop()


@dataclass
class LearnerProcess:
    """A running ``hitl learner``."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30) -> str:
        _end_group(self.process, timeout)
        return self.output()


def start_learner(
    directory: Path, config: str, *, env: Mapping[str, str] | None = None
) -> LearnerProcess:
    """``hitl learner --config <config>`` in ``directory``; it does not wait for anything
    (a learner standing by serves nothing to wait for: read its log)."""
    log = _log_path(directory, "learner")
    return LearnerProcess(_launch(directory, config, ["learner"], log, env or {}), log)


def pg_ctl_stop(cluster: PrivateCluster, mode: str = "fast") -> None:
    """``pg_ctl stop -m <mode>`` on a private cluster: ``fast`` ends every session and
    shuts down cleanly, ``immediate`` is a crash (``PrivateCluster.stop``)."""
    pg_ctl = private_postgres._bin("pg_ctl") or "pg_ctl"
    cluster._run(pg_ctl, "-D", str(cluster.data), "-m", mode, "-w", "stop")


# --- traffic ------------------------------------------------------------------------------


async def _alongside(main: asyncio.Future[Any], others: list[asyncio.Future[Any]]) -> None:
    """Wait for ``main`` while ``others`` run. The first failure of either side ends
    both and is raised; those of ``others`` still waiting when ``main`` ends (for
    acknowledgements that never came) are cancelled, and the caller's assertions say
    what did not happen."""
    rest = asyncio.gather(*others)
    try:
        await asyncio.wait([main, rest], return_when=asyncio.FIRST_COMPLETED)
        if rest.done() and rest.exception() is None:
            await main
        elif rest.done():
            main.cancel()
            rest.result()  # raises
        else:
            await main
    finally:
        for future in (main, rest):
            future.cancel()
        await asyncio.gather(main, rest, return_exceptions=True)


@dataclass(frozen=True)
class Reply:
    reply_id: str
    token: str


def _session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    """The load's HTTP client: at most ``concurrency`` connections, kept alive.

    aiohttp, not httpx: here httpx spends about 3 ms of the test's CPU per request, so
    the client was the bottleneck and a kill found only a vote or two inside the
    gateway; aiohttp spends a twentieth of that, so the gateway is what the load waits
    on, and a kill cuts off the votes in flight."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def make_replies(
    url: str, count: int, *, concurrency: int = 32, timeout_s: float = 30
) -> list[Reply]:
    """``count`` JSON chat replies from the gateway at ``url``; any failure raises."""
    todo = iter(range(count))
    made: list[Reply] = []

    async def client_loop(session: aiohttp.ClientSession) -> None:
        for i in todo:
            body = {"model": "local", "messages": [{"role": "user", "content": f"#{i}: votes?"}]}
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                text = await r.text()
                assert r.status == 200, f"chat request {i}: {r.status} {text}"
                hitl = json.loads(text)["hitl"]
            made.append(Reply(hitl["reply_id"], hitl["feedback_token"]))

    async with _session(concurrency, timeout_s) as session:
        await asyncio.gather(*(client_loop(session) for _ in range(concurrency)))
    return made


@dataclass
class VoteOutcome:
    """One vote sent: what it said, when, and what came back (``status`` None: no
    answer, the connection broke or the client timed out, ``error`` says how)."""

    reply_id: str
    index: int  # its place among the votes on its reply
    rating: str
    tag: str  # its comment, unique in the burst: which vote a stored row is
    sent_at: float  # time.monotonic()
    done_at: float = 0.0
    status: int | None = None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class VoteBurst:
    """``votes_per_reply`` votes on each of ``replies`` (alternating up and down), at most
    ``concurrency`` at once, each reply's votes one after the other.

    A vote that failed to connect (nothing was sent) is tried again after
    ``retry_connect_s``; a reply whose vote got no answer or a non-2xx answer gets no
    more votes, so the store's row for it is the last acknowledged vote or that last one.
    Everything stops at ``deadline_s`` after ``run`` began.
    """

    url: str
    replies: Sequence[Reply]
    votes_per_reply: int
    concurrency: int = 32
    timeout_s: float = 15.0
    deadline_s: float = 45.0
    retry_connect_s: float = 0.05
    # What happened, as it happens (``during`` may read it):
    outcomes: list[VoteOutcome] = field(default_factory=list, init=False)
    acknowledged: int = field(default=0, init=False)
    #: connections refused (nothing sent), tried again
    connect_retries: int = field(default=0, init=False)
    #: replies with votes left unsent when the deadline passed
    unfinished: int = field(default=0, init=False)

    _waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list, init=False, repr=False)

    async def acknowledged_at_least(self, count: int) -> None:
        """Return once ``count`` votes of the burst were acknowledged."""
        if self.acknowledged < count:
            event = asyncio.Event()
            self._waiters.append((count, event))
            await event.wait()

    async def run(self, *during: Awaitable[Any]) -> list[VoteOutcome]:
        """Send the burst while ``during`` run (e.g. a kill once enough are acknowledged);
        every outcome, in the order sent."""
        deadline = time.monotonic() + self.deadline_s
        queue: asyncio.Queue[tuple[Reply, int]] = asyncio.Queue()
        for reply in self.replies:
            queue.put_nowait((reply, 0))
        in_flight = 0  # replies taken from the queue whose vote is not answered yet
        unsent: list[Reply] = []  # replies whose next vote could not be sent in time

        async def client_loop(session: aiohttp.ClientSession) -> None:
            nonlocal in_flight
            while time.monotonic() < deadline:
                try:
                    reply, index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    if in_flight == 0:
                        return
                    await asyncio.sleep(0.01)  # a reply in flight may come back
                    continue
                in_flight += 1
                try:
                    outcome = await self._vote(session, reply, index, deadline)
                    if outcome is None:
                        unsent.append(reply)
                    elif outcome.acknowledged and index + 1 < self.votes_per_reply:
                        queue.put_nowait((reply, index + 1))
                finally:
                    in_flight -= 1

        async with _session(self.concurrency, self.timeout_s) as session:
            senders = asyncio.gather(*(client_loop(session) for _ in range(self.concurrency)))
            await _alongside(senders, [asyncio.ensure_future(d) for d in during])
        self.unfinished = queue.qsize() + len(unsent)
        return self.outcomes

    async def _vote(
        self, session: aiohttp.ClientSession, reply: Reply, index: int, deadline: float
    ) -> VoteOutcome | None:
        """Send vote ``index`` on ``reply`` until it was sent (None: not before the
        deadline); what came back."""
        rating = "up" if index % 2 == 0 else "down"
        tag = f"{reply.reply_id}/{index}"
        body = {"reply_id": reply.reply_id, "token": reply.token, "rating": rating, "comment": tag}
        while True:
            outcome = VoteOutcome(reply.reply_id, index, rating, tag, time.monotonic())
            try:
                async with session.post(self.url + "/v1/feedback", json=body) as r:
                    await r.read()
                    outcome.status = r.status
            except aiohttp.ClientConnectorError:
                if time.monotonic() >= deadline:
                    return None  # never sent: not an outcome
                self.connect_retries += 1
                await asyncio.sleep(self.retry_connect_s)
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome.status, outcome.error = None, type(exc).__name__
            outcome.done_at = time.monotonic()
            self.outcomes.append(outcome)
            if outcome.acknowledged:
                self.acknowledged += 1
                for count, event in self._waiters:
                    if self.acknowledged >= count:
                        event.set()
            return outcome


# --- what the store holds -----------------------------------------------------------------


def query(store_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the store at ``store_url`` (SQLite or PostgreSQL), read on a
    connection of its own, outside any gateway process."""
    engine = sqlalchemy.create_engine(sync_url(store_url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(sql), params)]
    finally:
        engine.dispose()


@dataclass(frozen=True)
class StoredVote:
    rating: str
    comment: str | None


def stored_votes(store_url: str) -> dict[str, list[StoredVote]]:
    """The ``feedback`` rows, by reply id (one voter per reply: one row each)."""
    votes: dict[str, list[StoredVote]] = {}
    for reply_id, rating, comment in query(
        store_url, "SELECT reply_id, rating, comment FROM feedback"
    ):
        votes.setdefault(reply_id, []).append(StoredVote(rating, comment))
    return votes


def vote_problems(
    outcomes: Sequence[VoteOutcome], stored: Mapping[str, list[StoredVote]]
) -> list[str]:
    """Where the store disagrees with what was acknowledged, one line each (empty: none).

    Per reply (its votes sent one after the other, none after a failed one): the stored
    vote is the last acknowledged one or one sent after it; with none acknowledged, none
    or one that was sent. A first vote acknowledged is a 201, a later one a 200; every
    stored row is a vote of this burst.
    """
    problems: list[str] = []
    by_reply: dict[str, list[VoteOutcome]] = {}
    for outcome in outcomes:
        by_reply.setdefault(outcome.reply_id, []).append(outcome)
    for reply_id, sent in by_reply.items():
        sent.sort(key=lambda o: o.index)
        acked = [o for o in sent if o.acknowledged]
        for o in acked:
            want = 201 if o.index == 0 else 200
            if o.status != want:
                problems.append(f"{o.tag}: acknowledged with {o.status}, expected {want}")
        since = [o for o in sent if not acked or o.index >= acked[-1].index]
        rows = stored.get(reply_id, [])
        if len(rows) > 1:
            problems.append(f"{reply_id}: {len(rows)} feedback rows for one voter")
        if not rows:
            if acked:
                problems.append(f"{acked[-1].tag}: acknowledged ({acked[-1].status}), not stored")
            continue
        match = [o for o in since if o.tag == rows[0].comment]
        if not match:
            problems.append(
                f"{reply_id}: stored {rows[0]} but the last acknowledged vote is "
                f"{acked[-1].tag if acked else None} (sent since: {[o.tag for o in since]})"
            )
        elif match[0].rating != rows[0].rating:
            problems.append(f"{match[0].tag}: sent {match[0].rating}, stored {rows[0].rating}")
    for reply_id in stored.keys() - by_reply.keys():
        problems.append(f"{reply_id}: stored {stored[reply_id]} but no vote was sent on it")
    return problems


def labels_per_reply(store_url: str, source: str = "user") -> Counter[str]:
    """How many ``label`` rows of ``source`` each reply has."""
    rows = query(store_url, "SELECT reply_id FROM label WHERE source = :source", source=source)
    return Counter(reply_id for (reply_id,) in rows)
