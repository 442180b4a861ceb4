"""``hitl purge``: remove message text from the store, keeping what is learned and audited.

``--older-than DAYS`` takes the exchanges older than that, ``--user ID`` those of one end
user (the request's ``user``); both together, those of that user older than that. The
text goes: questions, replies, requests, feedback comments and corrections, reviewers'
corrections. Labels, scores, decisions, timings and the review audit trail stay, and
the model learns from the purged exchanges exactly what it learned before.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from middleware.errors import ConfigError
from middleware.settings import Settings


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also NaN
        print(f"hitl: --older-than: {text!r} is not a number of days (0 or more)", file=sys.stderr)
        raise SystemExit(2)
    return days


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    purge = add(
        "purge",
        cmd_purge,
        "remove message text (questions, replies, comments, corrections) from the store, "
        "keeping labels, scores and the review audit",
    )
    purge.add_argument(
        "--older-than",
        metavar="DAYS",
        type=_days,
        help="exchanges created more than DAYS ago (0: all of them)",
    )
    purge.add_argument(
        "--user", metavar="ID", help="exchanges of this end user (the request's user)"
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="print what would go, and change nothing"
    )


def cmd_purge(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from feedback_store.purge import due_exchanges
    from feedback_store.report.metrics import iso
    from middleware.cli.report import _open_store, _require_database
    from middleware.flows.retention import purge, scope_of, summary

    if args.older_than is None and args.user is None:
        raise ConfigError("hitl purge needs --older-than DAYS, --user ID, or both")
    _require_database(settings)
    scope = scope_of(older_than_days=args.older_than, end_user=args.user, now=time.time())

    async def run() -> Any:
        store = await _open_store(settings)
        try:
            if args.dry_run:
                async for row in due_exchanges(store, scope):
                    print(f"would purge {row.id} ({iso(row.created_at)})")
            return await purge(store, scope, dry_run=args.dry_run)
        finally:
            await store.close()

    purged = asyncio.run(run())
    print(f"{'would purge' if args.dry_run else 'purged'} {summary(purged)}")
    return 0
