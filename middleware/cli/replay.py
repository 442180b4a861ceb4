"""``hitl replay FILE.jsonl [--store URL] [--json]``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from middleware.errors import ConfigError
from middleware.settings import Settings


def cmd_replay(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from tqdm import tqdm

    from middleware.app.replay import read_stream, replay

    path = Path(args.file)
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist: pass a JSONL stream of labelled exchanges "
            "(e.g. ../shared/data/convai2017_thumbs.jsonl, see its README for the format)"
        )
    try:
        items = list(read_stream(path))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.limit:
        items = items[: args.limit]
    bar = tqdm(total=len(items), unit="label", file=sys.stderr, disable=args.quiet, mininterval=0.5)

    def progress(n: int, validation: Any) -> None:
        bar.update(1)
        if n % 200 == 0:
            auc = validation.summary()["rolling_roc_auc"]
            bar.set_postfix_str(f"rolling AUC {auc:.3f}" if auc is not None else "")

    try:
        result = asyncio.run(
            replay(
                items,
                settings,
                store_url=args.store,
                baseline=not args.no_baseline,
                progress=progress,
            )
        )
    finally:
        bar.close()
    out = result.as_json()
    lines = [
        f"labels            {out['labels']}  ({out['labels_per_second']:.0f} labels/s end to end)",
        f"ROC AUC           {out['roc_auc']}   (baseline {out['baseline'].get('roc_auc')})",
        f"log loss          {out['log_loss']}",
        f"accuracy          {out['accuracy']}",
    ]
    for budget, caught in out["caught_at_budget"].items():
        base = out["baseline"].get("caught_at_budget", {}).get(budget)
        lines.append(
            f"caught @ {budget:<8} {caught}   escalated {out['escalated_share'][budget]}"
            f"   (baseline {base})"
        )
    live = out.get("live")
    if live is not None:  # the deeper look ran: the figures above are the combined policy's
        lines.append(f"live model alone: ROC AUC {live['roc_auc']}")
        for budget, caught in live["caught_at_budget"].items():
            lines.append(
                f"caught @ {budget:<8} {caught}   escalated {live['escalated_share'][budget]}"
            )
    print("\n".join(lines))
    if args.json:
        print(orjson.dumps(out).decode())
    return 0


def register(sub: Any, add: Any) -> None:
    p = add("replay", cmd_replay, "stream labelled exchanges through the loop; print how it learns")
    p.add_argument("file", metavar="FILE.jsonl")
    p.add_argument("--json", action="store_true", help="end with one JSON line of figures")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N exchanges")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
