"""Retention: message text older than ``[privacy] retain_days`` is purged, once at start
and then every hour, by the same purge as ``hitl purge`` (``feedback_store.purge``).

A purge keeps what learning needs (``kept_for_learning``): the features without text,
plus the hashed word counts the model learns from the text (``model.text_digest``), so
a model relearned from the labels learns exactly what it learned before. Several
processes may each run it: a purge only touches text that is still there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from feedback_store import ExchangeRow, Store, StoreError
from feedback_store.purge import Purged, Scope, purge_text
from middleware.learning.explain import WORDS_REASON
from middleware.learning.model import text_digest
from middleware.scoring.features import TEXT_KEYS, without_text
from middleware.tasks import cancelled

log = logging.getLogger("hitl.privacy")

DAY_S = 86_400.0
#: the reasons that quote the text: "the words “not sure” pulled the score down" (and,
#: in older rows, "reply: not sure pulled the score down")
_QUOTING = (WORDS_REASON, *(f"{key}: " for key in TEXT_KEYS))


def _loads(text: str, default: Any) -> Any:
    try:
        value = orjson.loads(text) if text else default
    except orjson.JSONDecodeError:
        return default
    return value if isinstance(value, type(default)) else default


def kept_for_learning(row: ExchangeRow) -> dict[str, str]:
    """What a purged exchange keeps in place of its text (pure): its features without
    text but with the text's hashed word counts, and its reasons without the words."""
    features = _loads(row.features_json, {})
    # Older rows kept the texts in the features; the learner reads them there first.
    texts = {
        "reply": features.get("reply", row.reply_text),
        "question": features.get("question", row.question),
    }
    kept = {**without_text(features), **text_digest(texts)}
    reasons = [
        r
        for r in _loads(row.reasons_json, [])
        if not (isinstance(r, str) and r.startswith(_QUOTING))
    ]
    return {
        "features_json": orjson.dumps(kept).decode(),
        "reasons_json": orjson.dumps(reasons).decode(),
    }


def summary(purged: Purged) -> str:
    """``text of N exchanges (M feedback comments, K corrections)``."""
    return (
        f"text of {purged.exchanges} exchanges ({purged.comments} feedback comments, "
        f"{purged.corrections} corrections)"
    )


def scope_of(*, older_than_days: float | None, end_user: str | None, now: float) -> Scope:
    """The exchanges older than ``older_than_days`` at ``now``, of ``end_user``, or both."""
    before = None if older_than_days is None else now - older_than_days * DAY_S
    return Scope(before=before, end_user=end_user)


async def purge(store: Store, scope: Scope, *, dry_run: bool = False) -> Purged:
    """The purge ``hitl purge`` and retention run (``dry_run``: count only)."""
    return await purge_text(store, scope, keep=kept_for_learning, dry_run=dry_run)


class Retention:
    """Purges text older than ``retain_days`` (0: never), at start and every ``interval_s``."""

    def __init__(
        self,
        *,
        store: Store,
        retain_days: float,
        interval_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.retain_days = retain_days
        self.interval_s = interval_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.retain_days > 0

    async def purge_once(self) -> Purged:
        scope = scope_of(older_than_days=self.retain_days, end_user=None, now=self.clock())
        purged = await purge(self.store, scope)
        if purged:
            log.info("retention (%g days): purged %s", self.retain_days, summary(purged))
        return purged

    async def run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except StoreError as exc:
                log.error("retention: the purge failed (%s); trying again later", exc)
            except Exception:  # a background task must not end unseen: say so, go on
                log.exception("retention: the purge failed; trying again later")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self.run(), name="hitl-retention")

    async def stop(self) -> None:
        await cancelled(self._task)
        self._task = None
