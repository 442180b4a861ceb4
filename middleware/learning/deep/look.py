"""Between the request path and the embedding worker: what waits for the deeper look.

The request path ``submit``s a scored reply and goes on (no await). One task (``run``)
takes the least certain waiting replies first (live score nearest 0.5), has the worker
embed them, and scores them with the second model; ``on_result`` then decides what to do
with a score (send an already delivered reply to review, within the same budget). When
more wait than ``queue_size``, the most certain are dropped and counted in ``skipped``
(``/metrics``). A held reply ``wait``s for its score, up to ``deep_wait_ms``.
Labels are learned by the same task (``learn``), so the second model has one writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from middleware.learning.deep.model import DeepModel, embedding_features, unit
from middleware.learning.deep.worker import Embedder, EmbedderUnavailable

log = logging.getLogger("hitl.deep")
_BATCH = 16


@dataclass(frozen=True, slots=True)
class DeepResult:
    reply_id: str
    live: float
    #: the second model's P(helpful), None while it has learned nothing
    score: float | None

    @property
    def combined(self) -> float:
        """The score the combined policy reads: the deeper look's where it has one."""
        return self.live if self.score is None else self.score


@dataclass(slots=True)
class _Pending:
    question: str
    reply: str
    live: float


class DeepLook:
    def __init__(
        self,
        *,
        embedder: Embedder,
        model: DeepModel,
        queue_size: int = 256,
        on_result: Callable[[DeepResult], Awaitable[None]] | None = None,
        kept: int = 4096,
    ) -> None:
        self.embedder = embedder
        self.model = model
        self.queue_size = queue_size
        self.on_result = on_result
        self._pending: dict[str, _Pending] = {}
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()
        self._waiters: dict[str, asyncio.Future[DeepResult | None]] = {}
        # what a reply's label is learned from, kept for the ``kept`` newest replies: its
        # embedding (float32) and the scalar features, the embedding's part made again
        self._features: OrderedDict[str, tuple[dict[str, float], np.ndarray]] = OrderedDict()
        self._kept = kept
        self.scored = self.skipped = self.failed = 0

    @property
    def pending(self) -> int:
        """Replies waiting for the look."""
        return len(self._pending)

    # -- the request path: no await ---------------------------------------------

    def submit(self, reply_id: str, question: str, reply: str, live: float) -> None:
        pending = self._pending
        pending[reply_id] = _Pending(question, reply, live)
        if len(pending) > self.queue_size:
            most_certain = max(pending, key=lambda r: abs(pending[r].live - 0.5))
            del pending[most_certain]
            self.skipped += 1
            self._resolve(most_certain, None)
        self._wake.set()

    async def wait(self, reply_id: str, timeout_s: float) -> DeepResult | None:
        """The deeper look's result for a reply submitted before, or None after ``timeout_s``."""
        if reply_id not in self._pending and reply_id not in self._inflight:
            return None
        future = self._waiters.setdefault(reply_id, asyncio.get_running_loop().create_future())
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return None
        return result

    # -- the task ------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self.step()

    async def step(self) -> list[DeepResult]:
        """Look at the least certain waiting replies (up to a batch)."""
        pending = self._pending
        ids = sorted(pending, key=lambda r: abs(pending[r].live - 0.5))[:_BATCH]
        batch = [pending.pop(r) for r in ids]
        if not batch:
            return []
        self._inflight.update(ids)
        try:
            vectors = await self.embedder.embed(
                [p.question for p in batch] + [p.reply for p in batch]
            )
        except EmbedderUnavailable as exc:
            self._inflight.difference_update(ids)
            self.failed += len(batch)
            log.warning("%s", exc)
            for reply_id in ids:
                self._resolve(reply_id, None)
            return []
        self._inflight.difference_update(ids)
        results = []
        for i, (reply_id, item) in enumerate(zip(ids, batch, strict=True)):
            q, r = vectors[i], vectors[len(batch) + i]
            x = self.model.features(q if item.question else [0.0] * len(r), r, item.live)
            self._keep(reply_id, x, r)
            result = DeepResult(reply_id, item.live, self.model.score(x))
            self.scored += 1
            results.append(result)
            self._resolve(reply_id, result)
            if self.on_result is not None:
                await self.on_result(result)
        return results

    async def learn(
        self, reply_id: str, question: str, reply: str, live: float, helpful: bool, weight: float
    ) -> bool:
        """Learn one label (embedding the reply when it was never looked at); False when
        the worker was unavailable, so the label is left to the live model."""
        kept = self._features.pop(reply_id, None)
        if kept is None:
            try:
                q, r = await self.embedder.embed([question or " ", reply])
            except EmbedderUnavailable as exc:
                log.warning("%s", exc)
                return False
            x = self.model.features(q if question else [0.0] * len(r), r, live)
        else:
            scalars, vector = kept
            x = {**embedding_features(unit(vector)), **scalars}
            r = vector.tolist()
        self.model.learn(x, r, helpful, weight)
        return True

    def _keep(self, reply_id: str, x: dict[str, float], r: list[float]) -> None:
        scalars = {k: v for k, v in x.items() if not k[1:].isdigit()}
        self._features[reply_id] = (scalars, np.asarray(r, dtype=np.float32))
        if len(self._features) > self._kept:
            self._features.popitem(last=False)

    def _resolve(self, reply_id: str, result: DeepResult | None) -> None:
        """Wake whoever waits for ``reply_id`` (None: it was skipped or the worker died)."""
        future = self._waiters.pop(reply_id, None)
        if future is not None and not future.done():
            future.set_result(result)
