"""Text a client or a reviewer controls never breaks or poisons the report: crafted model
names, metadata keys and values, end-user ids, comments, reviewer names and corrections
render as literal text in the HTML page, its charts and tables; JSON and CSV keep them
as data; the page never fails."""

from __future__ import annotations

import csv
import html
import io
from typing import Any

import httpx
import pytest

from tests.support.servers import ServerThread

ADMIN = "admin-token-for-tests-0123456789"
HOSTILE = [
    r"$\frac{1}{0}$",
    "$x^2$ and $",
    r"\mathrm{oops} $\undefined{$",
    "<script>alert(1)</script>",
    "</svg><img src=x onerror=alert(1)>",
    "%s %(x)s {0} {x!r} %%",
    '=HYPERLINK("http://example.invalid")',
    "&amp; &lt;b&gt; ]]> <!--",
    "emoji 😀 and rtl \u202e txet",
    "line\nbreak\ttab",
]


@pytest.fixture
def filled(gateway_factory: Any) -> ServerThread:
    """A gateway whose store holds replies, votes and verdicts full of hostile text."""
    gw: ServerThread = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN},
        policy={"escalate_below": 1.0, "review_budget": 1.0, "max_reviews_per_hour": 1000},
        server={"feedback_per_minute": 0},
    )
    for i, text in enumerate(HOSTILE):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={
                "model": "json",
                "user": text,
                "metadata": {text: text, "tenant": text, "plan": f"p{i % 2}"},
                "messages": [{"role": "user", "content": f"question {text}"}],
            },
        )
        assert r.status_code == 200, r.text
        hitl = r.json()["hitl"]
        vote = httpx.post(
            gw.url + "/v1/feedback",
            json={
                "reply_id": hitl["reply_id"],
                "token": hitl["feedback_token"],
                "rating": "down",
                "reason": "incorrect",
                "comment": text,
            },
        )
        assert vote.status_code == 201, vote.text
        verdict = (
            {"decision": "correct", "correction": text}
            if i % 2
            else {"decision": "reject", "reason": "unsafe"}
        )
        review = httpx.post(
            f"{gw.url}/v1/reviews/{hitl['reply_id']}",
            json={"reviewer": text[:200], **verdict},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert review.status_code == 200, review.text
    return gw


def get(gw: ServerThread, path: str) -> httpx.Response:
    r = httpx.get(gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert r.status_code == 200, r.text[:500]
    return r


def test_the_html_report_shows_hostile_text_as_text(filled: ServerThread) -> None:
    page = get(filled, "/report").text
    # Nothing a client wrote became markup: no live script, image or closing svg tag.
    assert "<script>alert(1)</script>" not in page
    assert "<img src=x" not in page
    assert "onerror=alert(1)>" not in page
    # ...and it is there, escaped, in the tables (reviewers, topics, segments).
    assert html.escape("<script>alert(1)</script>", quote=False) in page


def test_every_period_of_the_report_renders(filled: ServerThread) -> None:
    for query in ("", "?since=2000-01-01", "?since=1d", "?until=2999-01-01"):
        get(filled, "/report" + query)
        get(filled, "/report.json" + query)


def test_json_keeps_the_text_as_data(filled: ServerThread) -> None:
    body = get(filled, "/report.json").json()
    reviewers = {row["reviewer"] for row in body["reviews"]["by_reviewer"]}
    assert "<script>alert(1)</script>" in reviewers


def test_csv_cells_are_never_formulas(filled: ServerThread) -> None:
    r = get(filled, "/report.csv")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows
    for row in rows:
        for value in row.values():
            assert not (value or "").startswith(("=", "+", "-", "@")), value
