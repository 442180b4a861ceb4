"""``hitl retrain``: rebuild the model from every stored label, compare, maybe promote.

It prints the comparison as a table (``--json``: its last line is one JSON object with
``candidate``, ``live`` and the interval). ``--promote`` makes the candidate live only
when its ROC AUC is better by more than the bootstrap interval; the gateway's learner
adopts it and goes on learning from it, serving processes within seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from middleware.errors import ConfigError
from middleware.settings import Settings


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 < share < 1.0:  # also NaN
        print(f"hitl: --holdout: {text!r} is not a share between 0 and 1", file=sys.stderr)
        raise SystemExit(2)
    return share


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    retrain = add(
        "retrain",
        cmd_retrain,
        "rebuild the model from every stored label with the current settings and compare it "
        "with the live one on the newest labels",
    )
    retrain.add_argument(
        "--holdout",
        type=_share,
        default=0.2,
        metavar="SHARE",
        help="the newest share of labels the candidate is judged on before learning (0.2)",
    )
    retrain.add_argument(
        "--promote",
        action="store_true",
        help="make the candidate live when it is better by more than the interval",
    )
    features = retrain.add_mutually_exclusive_group()
    features.add_argument(
        "--recompute",
        dest="recompute",
        action="store_const",
        const=True,
        help="compute every labelled exchange's features again with today's feature code "
        "(default: only when the stored features are not the code's)",
    )
    features.add_argument(
        "--stored-features",
        dest="recompute",
        action="store_const",
        const=False,
        help="learn the features stored at reply time, even when they are not the code's",
    )
    retrain.add_argument("--by", metavar="NAME", help="who promotes (default: the OS user)")
    retrain.add_argument("--json", action="store_true", help="end with one JSON line")


def who(name: str | None) -> str:
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        return "unknown"


def _enough(labels: int, holdout: float) -> bool:
    from middleware.learning.retrain import held_out

    # One to train on and two to judge with (a ROC AUC needs a pair to rank).
    return labels > held_out(labels, holdout) >= 2


def too_few(labels: int, holdout: float) -> str:
    """Why ``labels`` are too few to compare on, how many would do, and a holdout that
    would do with these."""
    first = max(3, math.floor(1.5 / holdout))  # below it fewer than two are held out
    need = next((n for n in range(first, first + 10**4) if _enough(n, holdout)), None)
    said = "no labels" if not labels else f"{labels} label{'s' if labels > 1 else ''}"
    shares = (s / 20 for s in range(1, 20))
    other = next((h for h in shares if _enough(labels, h)), None)
    return (
        f"retrain: the store holds {said}; comparing needs "
        + (f"at least {need}" if need else "more")
        + f" at --holdout {holdout:g} (one or more to train on, two or more held out to "
        "judge with). Collect more feedback (thumbs or reviewer verdicts) first"
        + (f", or try --holdout {other:g}" if other is not None else "")
    )


def _cell(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(comparison: dict[str, Any]) -> str:
    cand, live = comparison["candidate"], comparison["live"]
    lines = [
        f"trained on {comparison['trained']} labels, judged on the newest {comparison['held_out']}",
        f"{'':<22}{'candidate':>12}{'live':>12}",
    ]
    for key, label in (("roc_auc", "ROC AUC"), ("log_loss", "log loss"), ("caught", "caught")):
        lines.append(f"{label:<22}{_cell(cand[key]):>12}{_cell(live[key]):>12}")
    interval = comparison["interval"]
    spread = "-" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]"
    diff = comparison["auc_difference"]
    lines.append(
        f"ROC AUC difference    {'-' if diff is None else f'{diff:+.4f}'} (95% CI {spread})"
    )
    lines.append("verdict               " + ("better" if comparison["better"] else "not better"))
    return "\n".join(lines)


def said_features(features: dict[str, Any]) -> str:
    """One line on what the candidate learned from: the stored features or recomputed."""
    if not features["recomputed"]:
        if features["stale"] is None:
            return "features: as stored at reply time (today's feature code's)"
        return (
            f"features: as stored at reply time, though {features['stale']}; what they lack "
            "reads 0.0. --recompute computes them again"
        )
    kept = features["purged_kept_stored"]
    return (
        f"features: recomputed with feature code version {features['features_version']} "
        f"for {features['labelled']} labelled exchanges ({features['exchanges']} replayed "
        f"in {features['seconds']:.1f} s), because {features['why']}"
        + (f"; {kept} purged kept their stored features (no text left)" if kept else "")
    )


def cmd_retrain(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from middleware.cli.report import _open_store, _require_database
    from middleware.learning.retrain import RetrainPlan, promote, retrain

    _require_database(settings)
    learner = settings.learner
    plan = RetrainPlan(
        model=learner.model,
        rolling_window=learner.rolling_window,
        holdout=args.holdout,
        passes=learner.retrain_passes,
        shuffle=learner.retrain_shuffle,
        seed=learner.retrain_seed,
        resamples=learner.retrain_bootstrap,
        budget=settings.policy.review_budget,
        prior=settings.policy.prior,
    )

    async def run() -> dict[str, Any]:
        store = await _open_store(settings)
        try:
            rebuilt = await retrain(store, plan, recompute_features=args.recompute)
            held, trained = rebuilt.comparison.held_out, rebuilt.comparison.trained
            if held < 2 or trained < 1:
                raise ConfigError(too_few(held + trained, args.holdout))
            out: dict[str, Any] = {"promoted": False, **rebuilt.comparison.as_dict()}
            out["features"] = rebuilt.features_dict()
            if args.promote and rebuilt.comparison.better:
                version, generation = await promote(store, rebuilt, by=who(args.by))
                out.update(rebuilt.comparison.as_dict())
                out.update(promoted=True, version=version, generation=generation)
            return out
        finally:
            await store.close()

    out = asyncio.run(run())
    print(said_features(out["features"]))
    print(table(out))
    if out["promoted"]:
        print(f"promoted: model version {out['version']} is live")
    elif args.promote:
        print("not promoted: the candidate is not better by more than the interval")
    if args.json:
        print(orjson.dumps(out).decode())
    return 0
