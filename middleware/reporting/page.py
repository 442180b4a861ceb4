"""The report for people: one self-contained HTML page with the charts inline.

The page opens offline and loads nothing (its Content-Security-Policy forbids it).
Every piece of text from users, reviewers or the store is escaped with ``_e``; the
charts come from ``charts`` as SVG. Rendering is CPU work: callers on an event loop
run it in a thread.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from middleware.reporting.charts import (
    chart_calibration,
    chart_confidence,
    chart_learning,
    chart_review_time,
    chart_reviews,
    chart_segments,
    chart_topics,
    chart_volume,
)
from middleware.reporting.format import duration, num, pct, period, when
from middleware.reporting.versions import changes_table, modes_line


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def learning_verdict(model: dict[str, Any]) -> str:
    """One sentence: is the model learning?"""
    curve = [p for p in model.get("learning_curve", []) if p["rolling_roc_auc"] is not None]
    labels = model.get("labels", 0)
    if labels < 20 or len(curve) < 2:
        return f"Too early to tell: {labels} label{'' if labels == 1 else 's'} so far."
    first, last = curve[0]["rolling_roc_auc"], curve[-1]["rolling_roc_auc"]
    if last >= 0.6 and last >= first + 0.02:
        return f"Yes: recent ROC AUC {last:.2f}, up from {first:.2f} on the first labels."
    if last >= 0.6:
        return f"Better than chance (recent ROC AUC {last:.2f}), not improving lately."
    if last > 0.52:
        return f"Barely: recent ROC AUC {last:.2f} is close to chance (0.5)."
    return f"No: recent ROC AUC {last:.2f} is no better than chance."


def _card(title: str, value: str, note: str = "") -> str:
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    return (
        f'<div class="card"><h3>{_e(title)}</h3><p class="value">{_e(value)}</p>{note_html}</div>'
    )


def _figure_html(svg: str | None, caption: str, empty: str) -> str:
    if svg is None:
        return (
            f'<figure class="empty"><figcaption>{_e(caption)}</figcaption>'
            f"<p>{_e(empty)}</p></figure>"
        )
    # The caption names the chart for screen readers too.
    svg = svg.replace('role="img"', f'role="img" aria-label="{_e(caption)}"', 1)
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str) -> str:
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _tiers(deep: dict[str, Any] | None) -> str:
    """Both tiers on the deeper look's recent labels (its figures are not the period's)."""
    if not deep:
        return ""
    rows = [
        (_e(name), _e(num(tier.get("roc_auc"))), _e(pct(tier.get("caught_at_budget"))))
        for name, tier in (
            ("live model", deep.get("live") or {}),
            ("deeper look", deep.get("deep") or {}),
        )
    ]
    caption = (
        f"Both tiers on the last {num(deep.get('labels'))} labels the deeper look learned, "
        f"caught within a {pct(deep.get('budget'))} review budget"
    )
    return _table(("tier", "ROC AUC", "thumbs-down caught"), rows, caption)


def _glance(report: dict[str, Any]) -> str:
    fb, reviews, model, decisions = (
        report["feedback"],
        report["reviews"],
        report["model"],
        report["decisions"],
    )
    total = report["exchanges"]
    replayed = reviews.get("replayed", 0)
    # Every review item, however opened, as the reviewers' chart counts them; a replayed
    # escalation was never sent: nobody was asked (``hitl replay``).
    reviewed = reviews["escalated"] - replayed
    not_sent = f" · {replayed:,} replayed, not sent" if replayed else ""
    later = reviews.get("after_reply", 0)
    not_sent += f" · {later:,} after the reply" if later else ""
    live = total - report.get("replayed", 0)
    of_live = "of live exchanges" if report.get("replayed", 0) else "of exchanges"
    cards = [
        _card("Exchanges", f"{total:,}", f"{decisions.get('ask', 0):,} asked for a vote"),
        _card("Helpful rate", pct(fb["helpful_rate"]), f"{fb['up']:,} up · {fb['down']:,} down"),
        _card(
            "Sent to people",
            f"{reviewed:,}",
            f"{pct(reviewed / live if live else None)} {of_live} · {reviews['holds']} held"
            + not_sent,
        ),
        _card(
            "Reviews",
            f"{reviews['decided']:,} decided",
            f"{reviews['pending']} waiting · {reviews['dead_letter']} dead letters",
        ),
        _card(
            "Time to decision",
            duration(reviews["median_seconds_to_decision"]),
            f"median · p90 {duration(reviews['p90_seconds_to_decision'])}",
        ),
        _card(
            "Model ROC AUC",
            num(model["roc_auc"]),
            f"recent {num(model['rolling_roc_auc'])} · {model['labels']:,} labels",
        ),
        _card("Drift events", str(model["drift_events"]), "marked on the time charts"),
        _card(
            "Reviewer agreement",
            num(reviews["agreement"], 2),
            f"Cohen's kappa · {reviews['items_with_several_reviewers']} items with 2+ reviewers",
        ),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _replayed_note(report: dict[str, Any]) -> str:
    """Say which exchanges came from ``hitl replay``, and that their times are the replay's."""
    replayed = report.get("replayed", 0)
    if not replayed:
        return ""
    escalations = report["reviews"].get("replayed", 0)
    return (
        f'<p class="replayed">{replayed:,} of these {report["exchanges"]:,} exchanges were '
        "replayed from a recorded stream (<code>hitl replay</code>, route "
        "<code>replay</code>): they are timed when they were replayed, and the "
        f"{escalations:,} the policy would have escalated were never sent to reviewers.</p>"
    )


STYLE = """
:root { color-scheme: light; --ink: #1f2933; --muted: #52606d; --line: #d9e2ec; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: #f5f7fa; }
header, main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.25rem; }
header { padding-top: 2rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 2px solid var(--line); }
h3 { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; margin: 0;
     color: var(--muted); }
.period { color: var(--muted); margin: 0; }
.replayed { background: #fff8e6; border-left: 4px solid #E69F00; padding: .5rem .8rem;
            margin: .75rem 0 0; }
.verdict { font-size: 1.05rem; background: #fff; border-left: 4px solid #0072B2;
           padding: .6rem .9rem; margin: 1rem 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(12.5rem, 1fr));
         gap: .75rem; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .75rem; }
.card .value { font-size: 1.5rem; font-weight: 650; margin: .15rem 0; }
.card .note { color: var(--muted); font-size: .85rem; margin: 0; }
figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: .75rem 0;
         padding: .75rem; }
figure.empty p { color: var(--muted); margin: .25rem 0 0; }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .25rem; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: .75rem; }
.pair figure { margin: 0; }
svg.chart { width: 100%; height: auto; display: block; }
table { width: 100%; border-collapse: collapse; background: #fff; margin: .75rem 0;
        font-size: .9rem; }
caption { text-align: left; color: var(--muted); padding: .25rem 0; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: #eef2f6; }
td ul { margin: 0; padding-left: 1.1rem; }
p.explain { color: var(--muted); margin: .25rem 0; }
footer { max-width: 60rem; margin: 2rem auto; padding: 0 1.25rem; color: var(--muted);
         font-size: .85rem; }
"""


def render_html(
    report: dict[str, Any],
    *,
    title: str = "hitl-gateway feedback report",
    progress: Callable[[str], None] | None = None,
) -> str:
    step = progress or (lambda _name: None)
    model, timeline, reviews = report["model"], report["timeline"], report["reviews"]
    span = report["period"]
    step("charts")
    volume = _figure_html(
        chart_volume(timeline),
        "Volume (hatched bars) and helpful rate (line, right axis) over time; dashed "
        "vertical lines mark detected drift.",
        "No exchanges in this period.",
    )
    learning = _figure_html(
        chart_learning(model),
        "Progressive ROC AUC: each label scored against the prediction made at reply "
        "time, before the model learned it. Above the dotted chance line and rising: it "
        "learns. Vertical lines: a model made live (solid: promotion, dash-dot: rollback; "
        "hover for who and when), dashed: detected drift.",
        "No labels yet: the model has nothing to be judged on.",
    )
    calibration = _figure_html(
        chart_calibration(model),
        "Reliability diagram: predicted P(helpful) against the observed helpful share "
        "per bin (grey bars, right axis: labels per bin).",
        "No labels yet.",
    )
    confidence = _figure_html(
        chart_confidence(model),
        "Confidence at reply time by outcome: the further apart, the better the model "
        "separates helpful from unhelpful replies.",
        "No labels yet.",
    )
    escalations = _figure_html(
        chart_reviews(timeline),
        "Escalations per period (wide bars), how many of them a reviewer has decided so "
        "far (narrow dotted bars, whenever the decision came) and the backlog still "
        "waiting at the end of each period (steps).",
        "No escalations in this period.",
    )
    review_time = _figure_html(
        chart_review_time(timeline),
        "Median reviewer time to decision, by when the reply was escalated.",
        "No reviewer decisions in this period.",
    )
    topics_chart = _figure_html(
        chart_topics(report["topics"]),
        "What users complain about: questions behind thumbs-down, rejected and corrected "
        "replies, clustered (TF-IDF and NMF) and named by their top terms.",
        "No complaints in this period.",
    )
    segments_chart = _figure_html(
        chart_segments(report["segments"]),
        "Helpful rate (///) and escalated rate (---) per segment: a group far from the "
        "others points at a bias in the model, the reviewers or the chat model.",
        "No segments.",
    )
    step("tables")
    topic_rows = [
        (
            _e(t["label"]),
            str(t["count"]),
            _e(", ".join(f"{k} {v}" for k, v in t["reasons"].items())),
            "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in t["examples"]) + "</ul>",
        )
        for t in report["topics"]
    ]
    segment_rows = [
        (
            _e(s["segment"]),
            f"{s['exchanges']:,}",
            f"{s['votes']:,}",
            pct(s["helpful_rate"]),
            pct(s["escalated_rate"]),
            pct(s["review_rejected_rate"]),
            num(s["mean_confidence"], 2),
        )
        for s in report["segments"]
    ]
    reviewer_rows = [
        (
            _e(r["reviewer"]),
            str(r["decided"]),
            str(r["approved"]),
            str(r["rejected"]),
            str(r["corrected"]),
            duration(r["median_seconds_to_decision"]),
            str(r.get("votes", 0)),
            pct(r.get("agrees_with_decision")),
        )
        for r in reviews["by_reviewer"]
    ]
    pair_rows = [
        (_e(" and ".join(p["reviewers"])), str(p["items"]), num(p["kappa"], 2))
        for p in reviews.get("reviewer_pairs", [])
    ]
    panel = (
        f'<p class="explain">Reviewers voting on the same items agree with Cohen\'s kappa '
        f"{num(reviews.get('reviewer_kappa'), 2)}; their votes split on "
        f"{reviews.get('disagreements', 0)} items.</p>"
        + _table(("reviewers", "items", "kappa"), pair_rows, "Agreement between reviewers")
        if pair_rows
        else ""
    )
    drift_rows = [
        (_e(d["at"]), _e(", ".join(f"{k}={v}" for k, v in d.items() if k not in ("at", "ts"))))
        for d in model["drifts"]
    ]
    reasons = ", ".join(f"{k} {v}" for k, v in report["feedback"]["by_reason"].items()) or "none"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing to fetch: the file must open offline and never phone home.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="period">{_e(period(span["from"], span["until"]))}'
        f" · generated {_e(when(report.get('generated_at')))}</p>",
        _replayed_note(report),
        "</header>",
        "<main>",
        '<p class="verdict"><strong>Is the model learning?</strong> '
        f"{_e(learning_verdict(model))}</p>",
        '<section aria-labelledby="glance"><h2 id="glance">At a glance</h2>',
        _glance(report),
        "</section>",
        '<section aria-labelledby="volume"><h2 id="volume">Volume and helpfulness</h2>',
        volume,
        f'<p class="explain">Thumbs-down reasons: {_e(reasons)}.</p>',
        "</section>",
        '<section aria-labelledby="model"><h2 id="model">Is the model learning?</h2>',
        learning,
        _tiers(model.get("deep")),
        f'<p class="explain modes">{_e(modes_line(model.get("learner_modes", [])))}</p>',
        changes_table(model["versions"]) if model.get("versions") else "",
        f'<div class="pair">{calibration}{confidence}</div>',
        f'<p class="explain">Log loss {num(model["log_loss"])} · accuracy at 0.5 '
        f"{pct(model['accuracy'])} · Brier score {num(model['brier'])}.</p>",
        _table(("when", "details"), drift_rows, "Detected drift")
        if drift_rows
        else '<p class="explain">No drift detected in this period.</p>',
        "</section>",
        '<section aria-labelledby="reviews"><h2 id="reviews">Do the reviewers keep up?</h2>',
        escalations,
        review_time,
        _table(
            (
                "reviewer",
                "decided",
                "approved",
                "rejected",
                "corrected",
                "median time",
                "votes",
                "agrees with decision",
            ),
            reviewer_rows,
            "Decisions by reviewer",
        )
        if reviewer_rows
        else '<p class="explain">No reviewer decisions yet.</p>',
        panel,
        "</section>",
        '<section aria-labelledby="topics"><h2 id="topics">Where are users unhappy?</h2>',
        topics_chart,
        _table(
            ("topic", "complaints", "reasons", "example questions"),
            topic_rows,
            "Top complaint topics",
        )
        if topic_rows
        else "",
        "</section>",
        '<section aria-labelledby="segments"><h2 id="segments">Segments</h2>',
        segments_chart,
        _table(
            (
                "segment",
                "exchanges",
                "votes",
                "helpful",
                "escalated",
                "rejected by reviewers",
                "mean confidence",
            ),
            segment_rows,
            "Rates per model, route and request metadata",
        )
        if segment_rows
        else "",
        "</section></main>",
        "<footer>hitl-gateway · the same figures as JSON: <code>hitl report --format json</code>"
        " or <code>GET /report.json</code></footer>",
        "</body></html>",
    ]
    return "\n".join(parts)
