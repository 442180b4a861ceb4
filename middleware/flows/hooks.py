"""What happens after a commit, as one value the composition root fills in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from middleware.ports import ReviewOutcome
from middleware.vocabulary import LabelSource, Rating


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Hooks:
    """Called on the event loop right after the commit they name; none may block.

    A flow calls them; it never learns who listens. ``middleware.app.parts`` is the
    one place that says who does (the learner, the outbox, the metrics).
    """

    #: a label (thumb or verdict) was committed: the learner reads it
    label_committed: Callable[[], None] = _nothing
    #: an escalation was committed or changed: the outbox posts or redraws its card
    review_queued: Callable[[], None] = _nothing
    #: a vote or verdict was counted, by its rating and who gave it
    rated: Callable[[Rating, LabelSource], None] = lambda rating, source: None
    #: a reviewer's verdict was committed
    decided: Callable[[ReviewOutcome], None] = lambda outcome: None
