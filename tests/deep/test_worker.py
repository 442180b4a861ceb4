"""The deeper look end to end with the real all-MiniLM-L6-v2 worker process.

Needs the ``deep`` extra (``pip install -e ".[deep]"``); skipped, saying so, without it.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
from collections.abc import AsyncIterator

import pytest

from middleware.learning.deep import DeepLook, DeepModel, DeepResult, Embedder
from middleware.learning.deep.worker import EmbedderUnavailable, minilm_installed

pytestmark = pytest.mark.skipif(
    not minilm_installed(),
    reason='the deep extra is not installed (pip install -e ".[deep]")',
)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture
async def embedder() -> AsyncIterator[Embedder]:
    e = Embedder()
    try:
        yield e
    finally:
        e.close()


def autogroup_nice(pid: int) -> int | None:
    """The nice of the process's autogroup ("/autogroup-85 nice 19"), None without one.

    The file is absent without autogroup, and empty for a process the kernel keeps in
    a cgroup's task group instead (as CI's runner does for the test process)."""
    try:
        with open(f"/proc/{pid}/autogroup") as group:
            fields = group.read().split()
    except OSError:
        return None
    return int(fields[-1]) if fields else None


def niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


async def test_the_worker_embeds_at_idle_priority_and_comes_back_after_a_kill(
    embedder: Embedder,
) -> None:
    a, b, c = await embedder.embed(
        ["Where is my parcel?", "Has my package been shipped yet?", "I like green tea."]
    )
    assert len(a) == 384
    assert cosine(a, b) > cosine(a, c) + 0.2
    pid = await embedder.pid()
    assert pid != os.getpid()
    assert niceness(pid) == 19
    if (group := autogroup_nice(pid)) is not None:
        # Its own session's group, at nice 19: idle against other programs too.
        assert group == 19
        assert autogroup_nice(os.getpid()) != 19
        assert os.getsid(pid) == pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EmbedderUnavailable, match="embedding worker stopped"):
        for _ in range(50):  # the pool notices the death on its next call
            await embedder.embed(["still there?"])
            await asyncio.sleep(0.1)
    assert embedder.restarts == 1
    again = await embedder.embed(["Where is my parcel?"])
    assert cosine(again[0], a) > 0.99
    assert await embedder.pid() != pid


async def test_the_look_scores_learns_and_goes_on_when_its_worker_dies(
    embedder: Embedder,
) -> None:
    seen: list[DeepResult] = []

    async def record(result: DeepResult) -> None:
        seen.append(result)

    look = DeepLook(embedder=embedder, model=DeepModel(), queue_size=8, on_result=record)
    days = ["Monday", "Tuesday", "Friday", "the weekend", "noon", "tomorrow"]
    for i in range(60):
        helpful = i % 2 == 0
        day = days[i // 2 % len(days)]
        reply = f"Your parcel arrives on {day}." if helpful else f"Sorry, I can't say ({day})."
        assert await look.learn(f"l{i}", "Where is my parcel?", reply, 0.5, helpful, 1.0)
    look.submit("r1", "Where is my parcel?", "It arrives on Monday.", 0.5)
    look.submit("r2", "Where is my parcel?", "Sorry, I don't know.", 0.5)
    results = await look.step()
    assert [r.reply_id for r in results] == ["r1", "r2"] == [r.reply_id for r in seen]
    first, second = (r.score for r in results)
    assert first is not None and second is not None and first > second
    os.kill(await embedder.pid(), signal.SIGKILL)
    await asyncio.sleep(0.5)
    look.submit("r3", "Where is my parcel?", "It arrives on Monday.", 0.5)
    assert await look.step() == [] and look.failed == 1
    look.submit("r4", "Where is my parcel?", "It arrives on Monday.", 0.5)
    assert [r.reply_id for r in await look.step()] == ["r4"]
    assert look.scored == 3
