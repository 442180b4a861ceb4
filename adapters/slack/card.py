"""Review cards as Block Kit: pure functions from a review item to blocks.

User and model text can ping or link nobody: it is masked (``[privacy] redact``),
escaped for mrkdwn (``&``, ``<``, ``>``: no ``<!channel>``, no ``<http://x|forged>``)
and cut to Slack's limits (3,000 characters a section, 50 blocks a message). Messages
are posted without ``link_names`` and with unfurls off (see ``adapters.slack.channel``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from middleware.ports import ReviewItem
from middleware.vocabulary import REASONS

Blocks = list[dict[str, Any]]
Redact = Callable[[str], str]

MAX_SECTION = 3000
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_FALLBACK = 300
MAX_INPUT = 3000

APPROVE = "hitl_approve"
REJECT = "hitl_reject"
CORRECT = "hitl_correct"
CORRECTION_VIEW = "hitl_correction"
CORRECTION_BLOCK = "correction"
CORRECTION_INPUT = "text"
BLOCK_PREFIX = "hitl_review:"

_VERB = {"approved": "Approved", "rejected": "Rejected", "corrected": "Corrected"}
_ICON = {"approved": ":white_check_mark:", "rejected": ":x:", "corrected": ":pencil2:"}
_USER_ID = re.compile(r"[UW][A-Z0-9]{2,30}")
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


def _same(text: str) -> str:
    return text


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: after it, ``<`` and ``>`` can only be literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, never mid-entity (``&am``)."""
    if len(text) <= limit:
        return text
    cut = _PARTIAL_ENTITY.sub("", text[: limit - 1])
    return cut + "…"


def _section(title: str, escaped: str) -> dict[str, Any]:
    """A section with a bold title and already escaped text, within the section limit."""
    head = f"*{title}*\n"
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": head + clip(escaped, MAX_SECTION - len(head))},
    }


def _mrkdwn(title: str, body: str) -> dict[str, Any]:
    """A section with a bold title and ``body`` (user text) escaped."""
    return _section(title, escape(body))


def mention(user: str | None) -> str:
    """A Slack user id as a mention; anything else (an API reviewer name) as inert text."""
    if user and _USER_ID.fullmatch(user):
        return f"<@{user}>"
    return escape(user or "someone")


def _when(at: float | None) -> str:
    if at is None:
        return "at an unknown time"
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(at)}^{{date_short_pretty}} at {{time}}|{stamp}>"


def _why(item: ReviewItem) -> str:
    lines = [f"Confidence {item.confidence:.2f} (replies below {item.threshold:.2f} get reviewed)"]
    lines += [f"• {escape(reason)}" for reason in item.reasons]
    if item.hold:
        lines.append("• held: the user waits for your verdict")
    return "\n".join(lines)


def _history(item: ReviewItem, redact: Redact) -> str:
    names = {"user": "User", "bot": "Bot"}
    lines = [f"{names.get(role, role)}: {redact(text)}" for role, text in item.history]
    return "\n".join(lines)


def verdict_line(item: ReviewItem) -> str:
    verb = _VERB.get(item.state, item.state.capitalize())
    icon = _ICON.get(item.state, "")
    line = f"{icon} *{verb}* by {mention(item.decided_by)} {_when(item.decided_at)}"
    if item.decision_reason:
        line += f" · reason: {escape(item.decision_reason)}"
    return line.strip()


_SIDE = {"approve": "approve", "reject": "reject", "correct": "reject"}


def tally_line(item: ReviewItem) -> str | None:
    """ "2 of 3 needed: approve 1 (<@U1>), reject 1 (<@U2>)": only when several decide."""
    if item.votes_required <= 1 and len(item.votes) <= 1:
        return None
    sides: dict[str, list[str]] = {"approve": [], "reject": []}
    for vote in item.votes:
        sides[_SIDE.get(vote.verdict, "reject")].append(mention(vote.reviewer))
    parts = [
        f"{side} {len(who)} ({', '.join(who)})" if who else f"{side} 0"
        for side, who in sides.items()
    ]
    return f"Votes: {', '.join(parts)} · {item.votes_required} agreeing decide"


def render_review_message(item: ReviewItem, *, redact: Redact = _same) -> Blocks:
    """The card for ``item``: with buttons while undecided, with the verdict after."""
    title = "Held reply: review needed" if item.hold else "Reply to review"
    if item.decided:
        title = f"Reviewed: {_VERB.get(item.state, item.state)}"
    blocks: Blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(title, MAX_HEADER)}},
    ]
    if item.history:
        blocks.append(_mrkdwn("Earlier in the conversation", _history(item, redact)))
    blocks.append(_mrkdwn("Question", redact(item.question) or "(empty)"))
    blocks.append(_mrkdwn("Answer", redact(item.answer) or "(empty)"))
    blocks.append(_section("Why it was flagged", _why(item)))
    if item.complaint:
        blocks.append(_mrkdwn("The user's complaint", redact(item.complaint)))
    meta = f"reply `{escape(item.reply_id)}`"
    if item.model:
        meta += f" · model `{escape(clip(item.model, 80))}`"
    meta += f" · trigger: {escape(item.trigger)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": meta}]})
    tally = tally_line(item)
    if tally is not None:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": tally}]})
    if item.decided:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": verdict_line(item)}})
        if item.correction:
            blocks.append(_mrkdwn("Corrected answer", redact(item.correction)))
    else:
        blocks.append(_actions(item.reply_id))
    if len(blocks) > MAX_BLOCKS:
        blocks = blocks[: MAX_BLOCKS - 1] + blocks[-1:]
    return blocks


def _actions(reply_id: str) -> dict[str, Any]:
    options = [
        {"text": {"type": "plain_text", "text": reason}, "value": f"{reply_id}|{reason}"}
        for reason in REASONS
    ]
    return {
        "type": "actions",
        "block_id": BLOCK_PREFIX + reply_id,
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": reply_id,
            },
            {
                "type": "static_select",
                "action_id": REJECT,
                "placeholder": {"type": "plain_text", "text": "Reject with a reason…"},
                "options": options,
            },
            {
                "type": "button",
                "action_id": CORRECT,
                "text": {"type": "plain_text", "text": "Correct…"},
                "value": reply_id,
            },
        ],
    }


def fallback_text(item: ReviewItem, *, redact: Redact = _same) -> str:
    """The notification text (what a push notification or a screen reader shows)."""
    if item.decided:
        head = f"{_VERB.get(item.state, item.state)} by {mention(item.decided_by)}"
    else:
        head = "Reply to review"
    return clip(f"{head}: {escape(redact(item.question))}", MAX_FALLBACK)


def parse_action(action: dict[str, Any]) -> tuple[str, str | None]:
    """(reply_id, reason) from a card action; ValueError when it is not one of ours."""
    reply_id = ""
    reason: str | None = None
    selected = action.get("selected_option")
    if isinstance(selected, dict):
        reply_id, _, picked = str(selected.get("value", "")).partition("|")
        reason = picked or None
    else:
        reply_id = str(action.get("value") or "")
    block = str(action.get("block_id") or "")
    if not reply_id and block.startswith(BLOCK_PREFIX):
        reply_id = block[len(BLOCK_PREFIX) :]
    if not reply_id:
        raise ValueError("the action names no reply")
    if reason is not None and reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    return reply_id, reason


def correction_modal(
    item: ReviewItem, *, redact: Redact = _same, channel: str | None = None, ts: str | None = None
) -> dict[str, Any]:
    """The modal the Correct button opens: the answer in a multi-line input to edit."""
    metadata = json.dumps({"reply_id": item.reply_id, "channel": channel, "ts": ts})
    return {
        "type": "modal",
        "callback_id": CORRECTION_VIEW,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Correct the answer"},
        "submit": {"type": "plain_text", "text": "Save correction"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _mrkdwn("Question", redact(item.question) or "(empty)"),
            {
                "type": "input",
                "block_id": CORRECTION_BLOCK,
                "label": {"type": "plain_text", "text": "Corrected answer"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": CORRECTION_INPUT,
                    "multiline": True,
                    "max_length": MAX_INPUT,
                    # Input values are plain text: shown as typed, never parsed as mrkdwn.
                    "initial_value": redact(item.answer)[:MAX_INPUT],
                },
            },
        ],
    }


def parse_correction(view: dict[str, Any]) -> tuple[str, str]:
    """(reply_id, corrected text) from a submitted correction modal."""
    try:
        metadata = json.loads(view.get("private_metadata") or "{}")
        reply_id = str(metadata["reply_id"])
        value = view["state"]["values"][CORRECTION_BLOCK][CORRECTION_INPUT]["value"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a correction submission ({exc})") from None
    return reply_id, str(value or "")
