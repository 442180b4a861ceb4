"""Rebuild the model from every stored label, compare it with the live one, promote it.

The candidate is a new brain with the configured model, taught every label in time
order (the learner's id order) but the most recent ``holdout`` share: in ``passes``
passes, the earlier ones (the model alone) shuffled when configured, the last one in
order through ``Brain.learn_label`` (per-user rates, progress). It is then judged on
the held-out labels progressively (each scored, then learned), and the live model by
the predictions stored at reply time for those same labels: what it really answered.

The figures are pure functions of (label, prediction) lists; the bootstrap of the ROC
AUC difference is paired (the same resampled labels for both) and seeded. A candidate
is promoted only when the whole interval lies above zero: better by more than it.
Before it goes live it learns every label that arrived during the rebuild.

With ``recompute`` (the default when the stored features are not the code's), the
candidate learns and is judged on features computed again by today's code
(``recompute.py``); the live model is still judged by what it stored at reply time.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, replace
from typing import Any

import orjson

from feedback_store import LabelRow, Store
from feedback_store.report import log_loss, roc_auc
from feedback_store.versions import Going, ModelVersions, Retired
from middleware.learning.brain import Brain
from middleware.learning.model import learn
from middleware.learning.recompute import Recomputed, padded, recompute, stale
from middleware.scoring.policy import ReviewBudget

__all__ = ["Comparison", "Figures", "Rebuilt", "compare", "figures", "paired_bootstrap"]


@dataclass(frozen=True, slots=True)
class Figures:
    roc_auc: float | None
    log_loss: float | None
    #: the share of unhelpful replies the review budget would have sent to people
    caught: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"roc_auc": self.roc_auc, "log_loss": self.log_loss, "caught": self.caught}


@dataclass(frozen=True, slots=True)
class Comparison:
    candidate: Figures
    live: Figures
    #: candidate's ROC AUC minus the live model's, and its bootstrap interval
    auc_difference: float | None
    interval: tuple[float, float] | None
    confidence: float
    trained: int
    held_out: int
    #: labels the candidate learned after the comparison (arrived during the rebuild)
    caught_up: int = 0

    @property
    def better(self) -> bool:
        return self.interval is not None and self.interval[0] > 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.as_dict(),
            "live": self.live.as_dict(),
            "auc_difference": self.auc_difference,
            "interval": list(self.interval) if self.interval else None,
            "confidence": self.confidence,
            "better": self.better,
            "trained": self.trained,
            "held_out": self.held_out,
            "caught_up": self.caught_up,
        }


def caught_at(ys: list[int], ps: list[float], budget: float) -> float | None:
    """The share of the unhelpful replies (label 0) that the gateway's own review budget
    would have escalated, scores taken in order (as ``hitl replay`` counts it)."""
    downs = ys.count(0)
    if not downs:
        return None
    policy = ReviewBudget(share=budget, per_hour=None)
    caught = 0
    for y, p in zip(ys, ps, strict=True):
        escalate = policy.allows(p, 0.0)
        policy.record(p, escalate, 0.0)
        caught += escalate and y == 0
    return round(caught / downs, 4)


def figures(ys: list[int], ps: list[float], budget: float) -> Figures:
    return Figures(roc_auc(ys, ps), log_loss(ys, ps), caught_at(ys, ps, budget))


def paired_bootstrap(
    ys: list[int],
    candidate: list[float],
    live: list[float],
    *,
    resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[float, float] | None:
    """The percentile interval of AUC(candidate) - AUC(live) over resampled labels
    (the same resample for both); None when too few resamples have both classes."""
    rng = random.Random(seed)
    n = len(ys)
    diffs: list[float] = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        sample = [ys[i] for i in idx]
        a = roc_auc(sample, [candidate[i] for i in idx])
        b = roc_auc(sample, [live[i] for i in idx])
        if a is not None and b is not None:
            diffs.append(a - b)
    if len(diffs) < resamples // 2:
        return None
    diffs.sort()
    tail = (1.0 - confidence) / 2.0
    low = diffs[min(len(diffs) - 1, math.floor(tail * len(diffs)))]
    high = diffs[min(len(diffs) - 1, math.ceil((1.0 - tail) * len(diffs)) - 1)]
    return round(low, 4), round(high, 4)


def compare(
    ys: list[int],
    candidate: list[float],
    live: list[float],
    *,
    budget: float,
    resamples: int,
    seed: int,
    trained: int,
) -> Comparison:
    mine, theirs = figures(ys, candidate, budget), figures(ys, live, budget)
    diff = None
    if mine.roc_auc is not None and theirs.roc_auc is not None:
        diff = round(mine.roc_auc - theirs.roc_auc, 4)
    interval = paired_bootstrap(ys, candidate, live, resamples=resamples, seed=seed)
    return Comparison(mine, theirs, diff, interval, 0.95, trained, len(ys))


def _x(row: LabelRow) -> dict[str, Any]:
    x = orjson.loads(row.features_json)
    x.setdefault("reply", row.reply_text)
    x.setdefault("question", row.question)
    return x


async def stored_labels(store: Store, after: int = 0) -> list[LabelRow]:
    rows: list[LabelRow] = []
    while batch := await store.labels_after(after, limit=1000):
        rows += batch
        after = batch[-1].id
    return rows


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrainPlan:
    model: str
    rolling_window: int
    holdout: float
    passes: int
    shuffle: bool
    seed: int
    resamples: int
    budget: float
    prior: float


@dataclass(slots=True)
class Rebuilt:
    brain: Brain
    comparison: Comparison
    #: how the candidate's features were computed again (None: it learned the stored ones)
    features: Recomputed | None = None
    #: why the stored features are not the code's (None: they are)
    stale: str | None = None

    def features_dict(self) -> dict[str, Any]:
        if self.features is None:
            return {"recomputed": False, "stale": self.stale}
        return self.features.as_dict()


def held_out(labels: int, holdout: float) -> int:
    """How many of the newest ``labels`` the candidate is judged on (at least one)."""
    return max(1, round(labels * holdout)) if labels else 0


def rebuild(rows: list[LabelRow], plan: RetrainPlan) -> Rebuilt:
    """The candidate taught all but the newest ``holdout`` share of ``rows`` (CPU-bound:
    run it on a thread), then judged on them against the stored predictions."""
    held = held_out(len(rows), plan.holdout)
    train, test = rows[: len(rows) - held], rows[len(rows) - held :]
    brain = Brain(model_name=plan.model, rolling_window=plan.rolling_window)
    rng = random.Random(plan.seed)
    for _ in range(plan.passes - 1):
        order = list(train)
        if plan.shuffle:
            rng.shuffle(order)
        for row in order:
            learn(brain.model, _x(row), bool(row.value), row.weight)
    for row in train:
        brain.learn_label(row, now=row.created_at)
    ys, candidate, live = [], [], []
    for row in test:
        predicted = brain.predict(_x(row))
        ys.append(int(row.value))
        candidate.append(plan.prior if predicted is None else predicted)
        live.append(float(row.confidence))
        brain.learn_label(row, now=row.created_at)
    comparison = compare(
        ys,
        candidate,
        live,
        budget=plan.budget,
        resamples=plan.resamples,
        seed=plan.seed,
        trained=len(train),
    )
    return Rebuilt(brain, comparison)


async def retrain(
    store: Store, plan: RetrainPlan, *, recompute_features: bool | None = None
) -> Rebuilt:
    """``recompute_features``: True recomputes, False learns the stored features, None
    (the default) recomputes when the stored features are not the code's (``stale``)."""
    rows = await stored_labels(store)
    old = await asyncio.to_thread(stale, rows)
    why = old if recompute_features is None else None
    if recompute_features:
        why = "--recompute asked for it"
    recomputed = None if why is None else await recompute(store, rows, why=why)
    if recomputed is not None:
        rows = recomputed.rows
    if old is not None:  # rows kept as stored (or purged) may lack what the model reads
        rows = await asyncio.to_thread(padded, rows)
    rebuilt = await asyncio.to_thread(rebuild, rows, plan)
    rebuilt.features, rebuilt.stale = recomputed, old
    return rebuilt


async def _retiring(store: Store) -> Retired:
    """The live model as the store has it (its newest snapshot), kept under its version
    in case no learner runs to keep its exact state when it adopts the new one. Without
    a snapshot (only labels, as ``hitl replay`` leaves a store) there is no model to
    keep: version 1 is listed without one until a learner keeps its state."""
    snapshot = await store.latest_snapshot()
    if snapshot is None:
        return Retired(
            version=1,
            kind="online",
            fingerprint="",
            settings_json="{}",
            last_label_id=0,
            labels=0,
            blob=b"",
        )
    brain = await asyncio.to_thread(Brain.from_bytes, snapshot.blob)
    return retired(brain, version=snapshot.version, blob=snapshot.blob)


def retired(brain: Brain, *, version: int, blob: bytes, figures_json: str = "{}") -> Retired:
    return Retired(
        version=version,
        kind="online" if version == 1 else "retrain",
        fingerprint=brain.fingerprint,
        settings_json=orjson.dumps(brain.built_with).decode(),
        last_label_id=brain.last_label_id,
        labels=brain.labels,
        blob=blob,
        figures_json=figures_json,
    )


async def promote(store: Store, rebuilt: Rebuilt, *, by: str) -> tuple[int, int]:
    """Teach the candidate every label that arrived during the rebuild, then make it
    live (a new version, a newer generation, a promotion event); (version, generation)."""
    brain = rebuilt.brain
    late = await stored_labels(store, brain.last_label_id)
    for row in late:
        brain.learn_label(row, now=row.created_at)
    rebuilt.comparison = replace(rebuilt.comparison, caught_up=len(late))
    figures = {**rebuilt.comparison.as_dict(), "features": rebuilt.features_dict()}
    figures_json = orjson.dumps(figures).decode()
    going = Going(
        blob=brain.to_bytes(),
        last_label_id=brain.last_label_id,
        labels=brain.labels,
        fingerprint=brain.fingerprint,
        settings_json=orjson.dumps(brain.built_with).decode(),
        figures_json=figures_json,
        by=by,
        kind="retrain",
        event="promotion",
    )
    return await ModelVersions(store).go_live(going, await _retiring(store))


async def rollback(store: Store, version: int, *, by: str) -> int:
    """Make an earlier version live again, exactly as it was kept; returns the generation.
    The learner then learns the labels that arrived since (nothing learned is lost)."""
    versions = ModelVersions(store)
    row = await versions.get(version)
    if row is None:
        known = ", ".join(str(v.id) for v in await versions.list()) or "none yet"
        raise LookupError(f"no model version {version} (versions: {known}); see `hitl models`")
    if not row.blob:
        raise LookupError(
            f"model version {version} was never kept (no learner ran while it was live, "
            "and the store held no snapshot of it); it cannot be made live again"
        )
    going = Going(
        blob=row.blob,
        last_label_id=row.last_label_id,
        labels=row.labels,
        fingerprint=row.fingerprint,
        settings_json=row.settings_json,
        figures_json=row.figures_json,
        by=by,
        kind=row.kind,
        event="rollback",
        version=version,
    )
    _, generation = await versions.go_live(going, await _retiring(store))
    return generation
