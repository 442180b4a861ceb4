"""``hitl reviews``: the review queue from a terminal, over the same decision path as
Slack, the review API and the review page (first decision wins, or the votes required).

    hitl reviews list [--state pending|decided|all]   one line per item, held first
    hitl reviews show ID                               the item as a reviewer sees it
    hitl reviews decide ID approve|reject|correct --reviewer NAME [--reason R] [--correction TEXT]

A decision taken here is a label like any other: a running gateway's learner learns it
within a second or so, and a client waiting on a held reply gets its answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from middleware.errors import UnknownReply
from middleware.reporting.format import short
from middleware.settings import Settings
from middleware.vocabulary import REASONS, VERDICTS

STATES: dict[str, tuple[str, ...]] = {
    "pending": ("pending", "posted"),
    "decided": ("approved", "rejected", "corrected"),
    "all": ("pending", "posted", "approved", "rejected", "corrected", "expired", "failed"),
}


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    reviews = add("reviews", cmd_reviews, "the review queue: list, show and decide items")
    verbs = reviews.add_subparsers(dest="reviews_command", required=True, metavar="ACTION")
    listing = verbs.add_parser("list", help="one line per item (held first, then oldest)")
    listing.add_argument("--state", choices=sorted(STATES), default="pending")
    listing.add_argument("--limit", type=int, default=200, help="at most this many (200)")
    show = verbs.add_parser("show", help="one item as a reviewer sees it")
    show.add_argument("reply_id", metavar="ID")
    decide = verbs.add_parser("decide", help="approve, reject (with a reason) or correct")
    decide.add_argument("reply_id", metavar="ID")
    decide.add_argument("decision", choices=VERDICTS)
    decide.add_argument("--reviewer", required=True, metavar="NAME", help="who decides")
    decide.add_argument("--reason", choices=REASONS, help="why (for reject)")
    decide.add_argument("--correction", metavar="TEXT", help="the corrected answer (correct)")
    for verb in (listing, show, decide):
        # Also after the action (`hitl reviews list --config PATH`); SUPPRESS keeps a
        # value given before it.
        verb.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
        verb.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help="store URL")


def _one_line(text: str, limit: int = 70) -> str:
    return short(" ".join(text.split()), limit)


def cmd_reviews(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from middleware.app.parts import build_parts
    from middleware.cli.report import _require_database

    _require_database(settings)
    parts = build_parts(settings, environ=environ, role="serve")

    async def run() -> int:
        await parts.store.start()
        try:
            if args.reviews_command == "list":
                return await _list(parts, STATES[args.state], args.limit)
            if args.reviews_command == "show":
                return await _show(parts, args.reply_id)
            return await _decide(parts, args)
        finally:
            await parts.store.close()

    return asyncio.run(run())


async def _list(parts: Any, states: tuple[str, ...], limit: int) -> int:
    from middleware.review.items import build_item

    now = time.time()
    queued = await parts.store.open_reviews(limit, states)
    for q in queued:
        item = build_item(q.escalation, q.exchange, q.feedback, threshold=parts.items.threshold)
        minutes = max(0.0, now - item.created_at) / 60
        held = "HELD " if item.hold else ""
        print(
            f"{item.reply_id}  {held}{item.state:<9} confidence {item.confidence:.2f}  "
            f"{minutes:5.0f} min  {_one_line(item.question)}"
        )
    if not queued:
        print("no review items" if len(states) > 2 else "nothing waits for a reviewer")
    return 0


async def _show(parts: Any, reply_id: str) -> int:
    item = await parts.items.for_reply(reply_id)
    if item is None:
        raise UnknownReply(reply_id)
    print(f"reply {item.reply_id}  ({'held: the user waits' if item.hold else item.trigger})")
    print(f"state: {item.state}" + (f" by {item.decided_by}" if item.decided_by else ""))
    print(f"confidence {item.confidence:.2f}, reviewed below {item.threshold:.2f}")
    for role, text in item.history:
        print(f"  {role}: {_one_line(text, 200)}")
    print(f"  user: {item.question}")
    print(f"reply:\n{item.answer or '(text purged)'}")
    if item.reasons:
        print("why it is here:")
        for reason in item.reasons:
            print(f"  - {reason}")
    for vote in item.votes:
        print(
            f"vote: {vote.reviewer} {vote.verdict}" + (f" ({vote.reason})" if vote.reason else "")
        )
    if item.correction:
        print(f"correction:\n{item.correction}")
    return 0


async def _decide(parts: Any, args: argparse.Namespace) -> int:
    outcome = await parts.decisions.decide(
        args.reply_id, args.decision, args.reviewer, args.reason, args.correction
    )
    if not outcome.applied:
        print(f"hitl: {outcome.message}", file=sys.stderr)
        return 1
    if outcome.decided:
        print(f"{args.reply_id}: {outcome.state} by {outcome.decided_by}")
    else:
        print(
            f"{args.reply_id}: vote counted ({len(outcome.votes)} of "
            f"{outcome.votes_required} agreeing reviewers needed)"
        )
    return 0
