"""The deeper look in the loop: what its score does to a reply, and what it learns.

After the fast decision the reply flow ``submit``s every reply to the look (no await).
When the look's score makes a delivered reply a review candidate (``deep_escalates``,
pure) and the review budget allows it, the reply goes to people through the same path
a thumbs-down complaint takes (``open_review``, trigger "deep"). A held reply waits for
the score up to ``[scoring] deep_wait_ms`` (``hold``): released from its hold only when
the look scored it at or above ``hold_below``; a look that failed or was late keeps it
held (fail closed).

One task owns the second model (``run``): it learns every label the live model has
learned (read from the store, in label order, up to the learner's position), then looks
at waiting replies. Its snapshot lives beside the live model's (``[kv] deep_model``),
written when the learner snapshots and at shutdown, restored at start; labels after it
are learned again from the store. Its rolling figures beside the live model's
(``figures.tier_figures``) are written with it (``[kv] deep_figures``): the report shows
both tiers from them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from feedback_store import Store, StoreError
from feedback_store.report import DEEP_FIGURES_KEY
from middleware.learning.deep.figures import tier_figures
from middleware.learning.deep.look import DeepLook, DeepResult
from middleware.learning.deep.model import DeepModel
from middleware.learning.deep.worker import Embedder
from middleware.quotas import FleetCaps
from middleware.scoring.policy import (
    BudgetState,
    ReviewBudget,
    Thresholds,
    decide,
    is_candidate,
)
from middleware.scoring.scorer import Assessment
from middleware.tasks import cancelled
from middleware.vocabulary import REVIEWED_DECISIONS

log = logging.getLogger("hitl.deep")

SNAPSHOT_KEY = "deep_model"


def deep_escalates(score: float | None, fast: str, thresholds: Thresholds) -> bool:
    """Whether the deeper look's ``score`` sends a reply the fast decision (``fast``)
    did not send to people to review, if the budget allows (pure)."""
    if score is None or fast in REVIEWED_DECISIONS:
        return False
    return is_candidate(score, False, thresholds)


def hold_released(score: float | None, thresholds: Thresholds) -> bool:
    """Whether a held reply leaves its hold: only on a score, never on its absence."""
    return score is not None and score >= thresholds.hold_below


@dataclass(frozen=True, slots=True)
class DeepCounts:
    scored: int
    skipped: int
    failed: int
    escalated: int
    released: int
    restarts: int
    labels: int


class DeepFlow:
    def __init__(
        self,
        *,
        embedder: Embedder,
        model: DeepModel,
        queue_size: int,
        store: Store,
        budget: ReviewBudget,
        thresholds: Thresholds,
        learned_up_to: Callable[[], int],
        review_queued: Callable[[], None],
        wait_s: float,
        caps: FleetCaps | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``learned_up_to()``: the newest label id the live model has learned."""
        self.look = DeepLook(
            embedder=embedder, model=model, queue_size=queue_size, on_result=self._scored
        )
        self.store = store
        self.budget = budget
        self.thresholds = thresholds
        self.learned_up_to = learned_up_to
        self.review_queued = review_queued
        self.wait_s = wait_s
        self.caps = caps
        self.clock = clock
        #: the newest label the second model has learned
        self.last_label_id = 0
        self.escalated = self.released = 0
        # the fast decision of the replies waiting for the look (bounded like its queue)
        self._fast: OrderedDict[str, str] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._saved_labels = -1

    @property
    def model(self) -> DeepModel:
        return self.look.model

    def counts(self) -> DeepCounts:
        look = self.look
        return DeepCounts(
            scored=look.scored,
            skipped=look.skipped,
            failed=look.failed,
            escalated=self.escalated,
            released=self.released,
            restarts=look.embedder.restarts,
            labels=look.model.labels,
        )

    # -- the request path --------------------------------------------------------

    def submit(self, reply_id: str, question: str, reply: str, assessment: Assessment) -> None:
        """Hand a committed reply to the look; no await, nothing waits for it."""
        self._fast[reply_id] = assessment.decision.kind
        while len(self._fast) > 4 * self.look.queue_size:
            self._fast.popitem(last=False)
        self.look.submit(reply_id, question, reply, assessment.confidence)
        self._wake.set()

    async def hold(
        self, reply_id: str, question: str, reply: str, assessment: Assessment
    ) -> Assessment:
        """A held reply's decision once the look had ``wait_s`` to score it: released to
        what the policy decides on the look's score when that is at or above
        ``hold_below``, else (no score, a failure, too late) still held."""
        self.look.submit(reply_id, question, reply, assessment.confidence)
        self._fast[reply_id] = "hold"
        self._wake.set()
        result = await self.look.wait(reply_id, self.wait_s)
        score = None if result is None else result.score
        if score is None or not hold_released(score, self.thresholds):
            return assessment
        now = self.clock()
        context = replace(assessment.context, risky=False)
        candidate = is_candidate(score, context.outlier, self.thresholds)
        room = self.budget.check(score, now, recorded=True) if candidate else BudgetState(False)
        decision = decide(score, context, room, self.thresholds)
        if decision.kind == "escalate":
            self.budget.escalated_later(now)
        reason = f"deeper look {score:.2f} >= {self.thresholds.hold_below:g}: not held"
        decision = replace(decision, reasons=(reason, *decision.reasons))
        self.released += 1
        log.info("hold %s released by the deeper look (%.3f)", reply_id, score)
        return replace(assessment, decision=decision, reasons=[*assessment.reasons, reason])

    # -- the look's task ------------------------------------------------------------

    async def _scored(self, result: DeepResult) -> None:
        fast = self._fast.pop(result.reply_id, "hold")
        score = result.score
        if score is None or not deep_escalates(score, fast, self.thresholds):
            return
        now = self.clock()
        try:
            if not self.budget.allows(score, now, recorded=True):
                return
            if self.caps is not None and not await self.caps.review():
                return
            opened = await self.store.open_review(result.reply_id, trigger="deep", now=now)
        except StoreError as exc:
            log.error("deeper look on %s: review not opened (%s)", result.reply_id, exc)
            return
        if opened is not None:
            self.budget.escalated_later(now)
            self.escalated += 1
            self.review_queued()
            log.info("reply %s sent to review by the deeper look (%.3f)", result.reply_id, score)

    def wake(self) -> None:
        """The live model learned labels: the second model learns them next."""
        self._wake.set()

    async def catch_up(self) -> int:
        """Learn every label the live model has learned and this model has not."""
        learned = 0
        up_to = self.learned_up_to()
        while self.last_label_id < up_to:
            rows = await self.store.labels_after(self.last_label_id, limit=200)
            rows = [row for row in rows if row.id <= up_to]
            if not rows:
                break
            for row in rows:
                await self.look.learn(
                    row.reply_id,
                    row.question,
                    row.reply_text,
                    float(row.confidence),
                    bool(row.value),
                    row.weight,
                )
                self.last_label_id = row.id
                learned += 1
        return learned

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.catch_up()
            except StoreError as exc:
                log.error("deeper look could not read the labels (%s); retrying", exc)
                await asyncio.sleep(1.0)
                self._wake.set()
            while self.look.pending:
                await self.look.step()

    # -- snapshots and lifetime ---------------------------------------------------

    async def restore(self) -> None:
        try:
            stored = await self.store.value(SNAPSHOT_KEY)
            if stored:
                last, blob = pickle.loads(base64.b64decode(stored))
                self.look.model = DeepModel.from_bytes(blob)
                self.last_label_id = int(last)
                self._saved_labels = self.look.model.labels
        except StoreError:
            raise
        except Exception as exc:  # a cache we cannot read is relearned from the labels
            log.warning("deeper look snapshot unreadable (%s); relearning all labels", exc)
        log.info(
            "deeper look: %d labels learned, up to label %d",
            self.look.model.labels,
            self.last_label_id,
        )

    async def snapshot(self) -> None:
        """The model, and its rolling figures beside the live model's for the report."""
        model = self.look.model
        if model.labels == self._saved_labels:
            return
        blob = pickle.dumps((self.last_label_id, model.to_bytes()), protocol=5)
        figures = {**tier_figures(model.history, self.budget.share), "at": self.clock()}
        try:
            await self.store.put_value(SNAPSHOT_KEY, base64.b64encode(blob).decode())
            await self.store.put_value(DEEP_FIGURES_KEY, json.dumps(figures))
        except StoreError as exc:
            log.error("deeper look snapshot not saved (%s)", exc)
            return
        self._saved_labels = model.labels

    async def start(self) -> None:
        """Restore the snapshot, then learn what came after it and look, in its task."""
        await self.restore()
        self._task = asyncio.create_task(self.run(), name="hitl-deep")
        self._wake.set()

    async def stop(self) -> None:
        await cancelled(self._task)
        self._task = None
        await self.snapshot()
        self.look.embedder.close()
