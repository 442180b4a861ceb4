"""The review queue page: every waiting item, held ones first, as plain HTML (pure).

It reads without JavaScript (each item is a form that posts its decision); the page's
script (``static/review.js``) adds the keyboard and opens the next item by itself.
Every piece of text from users, models or reviewers is escaped; the reply's words are
shaded by their share of the score (red pulled it down, green pushed it up).
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from middleware.learning.explain import TRAITS, Explanation
from middleware.ports import ReviewItem
from middleware.reporting.format import duration
from middleware.scoring.features import word_spans
from middleware.vocabulary import REASONS

KEYS = (
    ("j / k", "next / previous item"),
    ("a", "approve"),
    ("r", "reject (pick a reason)"),
    ("c", "correct (edit the text)"),
    ("Esc", "leave the text box"),
)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    item: ReviewItem
    explanation: Explanation | None


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _shade(value: float, strongest: float) -> str:
    """A background for a word's share: red below zero, green above, by strength."""
    if strongest <= 0 or value == 0:
        return ""
    alpha = min(1.0, abs(value) / strongest) * 0.55
    rgb = "220,38,38" if value < 0 else "22,163,74"
    return f"background:rgba({rgb},{alpha:.2f})"


def heatmap(text: str, shares: Sequence[tuple[str, float]]) -> str:
    """``text`` as HTML with each word in a shaded ``<span>`` titled with its share."""
    spans = word_spans(text)
    if spans is None or len(spans) != len(shares):
        # Positions do not line up with the model's words: shade the words alone.
        return " ".join(_word(word, value, _strongest(shares)) for word, value in shares)
    strongest = _strongest(shares)
    out, at = [], 0
    for (start, end), (_, value) in zip(spans, shares, strict=True):
        out.append(_e(text[at:start]))
        out.append(_word(text[start:end], value, strongest))
        at = end
    out.append(_e(text[at:]))
    return "".join(out)


def _strongest(shares: Sequence[tuple[str, float]]) -> float:
    return max((abs(v) for _, v in shares), default=0.0)


def _word(word: str, value: float, strongest: float) -> str:
    style = _shade(value, strongest)
    attr = f' style="{style}"' if style else ""
    return f'<span class="w"{attr} title="{value:+.3f}">{_e(word)}</span>'


def _traits(explanation: Explanation | None) -> str:
    if explanation is None:
        return ""
    names = set(TRAITS.values())
    rows = [(n, v) for n, v in explanation.features if n in names and abs(v) >= 0.005][:5]
    if not rows:
        return ""
    cells = "".join(
        f'<li class="{"down" if v < 0 else "up"}">{_e(n)} <b>{v:+.2f}</b></li>' for n, v in rows
    )
    return f'<h4>Strongest traits</h4><ul class="traits">{cells}</ul>'


def _conversation(item: ReviewItem) -> str:
    turns = [
        f'<p class="turn {_e(role)}"><b>{_e(role)}:</b> {_e(text)}</p>'
        for role, text in item.history
    ]
    turns.append(f'<p class="turn user"><b>user:</b> {_e(item.question)}</p>')
    return '<section class="conversation">' + "".join(turns) + "</section>"


def _form(item: ReviewItem) -> str:
    rid = _e(item.reply_id)
    reasons = "".join(f'<option value="{_e(r)}">{_e(r)}</option>' for r in REASONS)
    return (
        f'<form class="decide" method="post" action="/review/{rid}">'
        f'<button name="decision" value="approve" class="approve">'
        f"Approve <kbd>a</kbd></button>"
        f'<label>Reason <select name="reason">{reasons}</select></label>'
        f'<button name="decision" value="reject" class="reject">Reject <kbd>r</kbd></button>'
        f'<label class="fix">Correction<textarea name="correction" rows="4">'
        f"{_e(item.answer)}</textarea></label>"
        f'<button name="decision" value="correct" class="correct">Correct <kbd>c</kbd></button>'
        "</form>"
    )


def _entry(entry: QueueEntry, now: float, index: int) -> str:
    item, explanation = entry.item, entry.explanation
    held = '<span class="badge held">held: the user waits for you</span>' if item.hold else ""
    votes = (
        f'<span class="votes">{len(item.votes)} of {item.votes_required} votes</span>'
        if item.votes_required > 1
        else ""
    )
    reply = (
        heatmap(item.answer, explanation.words)
        if explanation is not None and item.answer
        else _e(item.answer or "(text purged)")
    )
    why = "".join(f"<li>{_e(r)}</li>" for r in item.reasons) or "<li>(no reason recorded)</li>"
    below = item.confidence < item.threshold
    classes = " ".join(["item"] + ["held"] * item.hold + ["current"] * (index == 0))
    return (
        f'<article class="{classes}" id="item-{_e(item.reply_id)}" '
        f'data-reply="{_e(item.reply_id)}" tabindex="-1">'
        f'<header><span class="n">#{index + 1}</span>{held}'
        f"<span>waiting {_e(duration(max(0.0, now - item.created_at)))}</span>"
        f"<span>model {_e(item.model or '?')}</span>{votes}"
        f'<code class="rid">{_e(item.reply_id)}</code></header>'
        f"{_conversation(item)}"
        f'<section class="reply"><h3>Reply <small class="legend"><span class="down">red</span>: '
        f'pulled the score down · <span class="up">green</span>: pushed it up</small></h3>'
        f'<p class="heat">{reply}</p></section>'
        f'<p class="confidence">Confidence <b>{item.confidence:.2f}</b> '
        f"{'below' if below else 'at or above'} the review threshold {item.threshold:.2f} "
        f'<meter min="0" max="1" low="{item.threshold:.2f}" optimum="1" '
        f'value="{item.confidence:.3f}"></meter></p>'
        f'<h4>Why it is here</h4><ul class="why">{why}</ul>'
        f"{_traits(explanation)}"
        f"{_form(item)}"
        "</article>"
    )


def render_queue(
    entries: Sequence[QueueEntry],
    *,
    reviewer: str,
    notice: str | None = None,
    now: float | None = None,
    limit: int = 200,
) -> str:
    """The whole page (pure): ``entries`` in the order given (held first, oldest first)."""
    now = time.time() if now is None else now
    held = sum(1 for e in entries if e.item.hold)
    keys = " · ".join(f"<kbd>{_e(k)}</kbd> {_e(what)}" for k, what in KEYS)
    flash = (
        f'<p id="notice" role="status">{_e(notice)}</p>'
        if notice
        else ('<p id="notice" role="status"></p>')
    )
    items = "".join(_entry(e, now, i) for i, e in enumerate(entries))
    empty = '<p class="empty">Nothing waits for a reviewer. Well done.</p>' if not entries else ""
    more = (
        f'<p class="more">Showing the first {limit}; decide some to see the rest.</p>'
        if len(entries) >= limit
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Review queue ({len(entries)}) · hitl-gateway</title>"
        '<link rel="stylesheet" href="/static/review.css"></head><body>'
        f'<header class="top"><h1>Review queue</h1><p>Signed in as <b>{_e(reviewer)}</b> · '
        f'<span id="count">{len(entries)}</span> waiting, {held} held</p>'
        f'<p class="keys">Keys: {keys}</p></header>'
        f"<main>{flash}{empty}{items}{more}</main>"
        '<script src="/static/review.js"></script></body></html>'
    )
