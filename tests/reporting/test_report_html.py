"""The HTML report, the CSV, and the command line's report and export files."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import re
from pathlib import Path

import pytest

from feedback_store import Store
from feedback_store.export import correction_record, request_messages
from feedback_store.report import (
    CSV_COLUMNS,
    EventRow,
    ExchangeRow,
    LabelPoint,
    ReportRows,
    ReviewRow,
    VoteRow,
    build_report,
    exchange_table,
)
from middleware.cli.main import main
from middleware.reporting import learning_verdict, render_csv, render_html
from tests.support.report_data import CORRECTION, EXCHANGES, SYSTEM, T0, fill_known_store

# A load from the network: an http(s) or protocol-relative URL in src, href or url().
EXTERNAL = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)(?:https?:)?//""", re.I)


def busy_rows(n: int = 400) -> ReportRows:
    """A few days of traffic with votes, reviews, drift and segments."""
    rng = random.Random(11)
    rows = ReportRows()
    questions = ["how do I reset my password", "where is my refund", "cancel my plan <b>now</b>"]
    for i in range(n):
        at = T0 + i * 600.0
        confidence = rng.random()
        helpful = rng.random() < confidence
        decision = "escalate" if confidence < 0.2 else "ask" if confidence < 0.6 else "deliver"
        reply_id = f"x{i}"
        rows.exchanges.append(
            ExchangeRow(
                reply_id,
                at,
                model=rng.choice(["m1", "m2"]),
                decision=decision,
                confidence=confidence,
                question=rng.choice(questions),
                meta={"locale": rng.choice(["en", "fr"])},
            )
        )
        if rng.random() < 0.6:
            rows.votes.append(VoteRow(reply_id, "up" if helpful else "down", updated_at=at + 30))
            rows.labels.append(
                LabelPoint(len(rows.labels) + 1, reply_id, int(helpful), confidence, at + 30)
            )
        if decision == "escalate":
            decided = rng.random() < 0.8
            rows.reviews.append(
                ReviewRow(
                    len(rows.reviews) + 1,
                    reply_id,
                    rng.choice(["approved", "rejected"]) if decided else "posted",
                    at,
                    decided_by="U1" if decided else None,
                    decided_at=at + rng.uniform(60, 3600) if decided else None,
                )
            )
    rows.events.append(EventRow(T0 + 100 * 600, "drift", {"error_before": 0.3}))
    return rows


def test_html_report_has_its_charts_inline_and_loads_nothing() -> None:
    page = render_html(build_report(busy_rows(), now=T0))
    charts = re.findall(r"<svg\b[^>]*>", page)
    assert len(charts) == 8
    assert all('role="img"' in tag and "aria-label=" in tag for tag in charts)
    for heading in (
        "Volume and helpfulness",
        "Is the model learning?",
        "Do the reviewers keep up?",
        "Where are users unhappy?",
        "Segments",
    ):
        assert heading in page
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "<script" not in page
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert "default-src 'none'" in page
    # User text is escaped, never markup.
    assert "cancel my plan &lt;b&gt;now&lt;/b&gt;" in page
    assert "<b>now</b>" not in page
    # Each chart's ids are its own: no two charts define the same id.
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    # The drift is marked on the time charts (a dashed line labelled in the legends).
    assert page.count(">drift<") >= 3


def test_html_report_of_an_empty_store_says_so_instead_of_drawing() -> None:
    page = render_html(build_report(ReportRows(), now=T0))
    assert "<svg" not in page
    assert "No exchanges in this period." in page
    assert "No labels yet" in page
    assert "Too early to tell: 0 labels so far." in page


@pytest.mark.parametrize(
    ("curve", "verdict"),
    [
        ([0.52, 0.58, 0.71], "Yes: recent ROC AUC 0.71, up from 0.52"),
        ([0.70, 0.70, 0.69], "Better than chance (recent ROC AUC 0.69), not improving"),
        ([0.50, 0.51, 0.55], "Barely: recent ROC AUC 0.55 is close to chance"),
        ([0.50, 0.45, 0.49], "No: recent ROC AUC 0.49 is no better than chance."),
    ],
)
def test_learning_verdict(curve: list[float], verdict: str) -> None:
    model = {
        "labels": 300,
        "learning_curve": [{"rolling_roc_auc": a} for a in curve],
    }
    assert learning_verdict(model).startswith(verdict)


def test_csv_round_trips_one_row_per_exchange() -> None:
    rows = busy_rows(60)
    table = exchange_table(rows)
    parsed = list(csv.DictReader(io.StringIO(render_csv(table))))
    assert tuple(parsed[0]) == CSV_COLUMNS
    assert [r["reply_id"] for r in parsed] == [e.id for e in rows.exchanges]
    for row, original in zip(parsed, table, strict=True):
        assert row["decision"] == original["decision"]
        assert float(row["confidence"]) == original["confidence"]
        assert row["vote"] == (original["vote"] or "")
        assert row["review_state"] == (original["review_state"] or "")
        assert row["label"] == ("" if original["label"] is None else str(original["label"]))


def test_correction_record_is_the_openai_fine_tuning_chat_format() -> None:
    request = json.dumps({"model": "m", "messages": [SYSTEM, {"role": "user", "content": "q?"}]})
    assert correction_record(request, "Better.") == {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "q?"},
            {"role": "assistant", "content": "Better."},
        ]
    }
    assert correction_record(request, "   ") is None
    assert correction_record("{}", "Better.") is None
    assert request_messages('{"messages": ["not a message"]}') is None
    assert request_messages("not json") is None


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def known_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'known.db'}"

    async def fill() -> None:
        store = Store(url, config_hint="test.toml")
        await store.start()
        try:
            await fill_known_store(store)
        finally:
            await store.close()

    asyncio.run(fill())
    return url


def test_cli_report_writes_html_json_and_csv(
    known_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html_path, json_path, csv_path = (tmp_path / f"r.{ext}" for ext in ("html", "json", "csv"))
    for path in (html_path, json_path, csv_path):
        # The format follows the file's extension.
        assert main(["report", "--store", known_db, "--out", str(path)], environ={}) == 0
    assert "wrote CSV for 8 exchanges" in capsys.readouterr().out
    assert "<svg" in html_path.read_text() and not EXTERNAL.search(html_path.read_text())
    report = json.loads(json_path.read_text())
    assert report["exchanges"] == 8
    assert report["reviews"]["median_seconds_to_decision"] == 450.0
    assert len(list(csv.DictReader(io.StringIO(csv_path.read_text())))) == 8

    assert (
        main(
            [
                "report",
                "--store",
                known_db,
                "--format",
                "json",
                "--since",
                "2023-11-14T22:15:00Z",
                "--until",
                "2023-11-14T22:17:30",
            ],
            environ={},
        )
        == 0
    )
    windowed = json.loads(capsys.readouterr().out)
    assert windowed["exchanges"] == 3


def test_cli_report_refuses_a_missing_database_and_a_bad_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert main(["report", "--store", missing], environ={}) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "nothing.db").exists()
    with pytest.raises(SystemExit):
        main(["report", "--store", missing, "--since", "last tuesday"], environ={})
    assert "is not a date" in capsys.readouterr().err


def test_cli_export_labelled_exchanges_round_trip(
    known_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "labelled.jsonl"
    assert main(["export", "--store", known_db, "--out", str(out)], environ={}) == 0
    assert "wrote 5 labelled exchanges" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {r["reply_id"]: r for r in records}
    assert list(by_id) == ["e1", "e2", "e3", "e4", "e6"]  # oldest first; e5, e7, e8 unlabelled
    assert (by_id["e1"]["label"], by_id["e1"]["label_source"]) == (1, "user")
    # The reviewer's verdict names the label; the user's vote stays on the record.
    assert (by_id["e3"]["label"], by_id["e3"]["label_source"]) == (0, "reviewer")
    assert [lb["source"] for lb in by_id["e3"]["labels"]] == ["user", "reviewer"]
    assert by_id["e3"]["votes"] == [
        {"rating": "down", "reason": "incorrect", "comment": None, "correction": None}
    ]
    assert by_id["e4"]["review"]["correction"] == CORRECTION
    question = dict((e[0], e[5]) for e in EXCHANGES)["e2"]
    assert by_id["e2"]["messages"] == [SYSTEM, {"role": "user", "content": question}]
    assert by_id["e2"]["meta"]["locale"] == "en"


def test_cli_export_corrections_for_fine_tuning(
    known_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--corrections", "--store", known_db], environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "messages": [
                SYSTEM,
                {"role": "user", "content": "refund for a cancelled order"},
                {"role": "assistant", "content": CORRECTION},
            ]
        }
    ]
    # End users' corrections are unvetted: only on request.
    out = tmp_path / "all.jsonl"
    argv = ["export", "--corrections", "--user-corrections", "--store", known_db, "--out", str(out)]
    assert main(argv, environ={}) == 0
    examples = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert [m[-1]["content"] for m in examples] == [CORRECTION, "Open 9 to 5."]
    assert all(set(m) == {"role", "content"} for example in examples for m in example)
    assert main(["export", "--user-corrections", "--store", known_db], environ={}) == 2


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1"])
def test_csv_cells_never_become_formulas(text: str) -> None:
    from feedback_store.report import CSV_COLUMNS

    row = {column: None for column in CSV_COLUMNS}
    # The model name comes from the client, the reviewer's name from the review tool.
    row.update({"model": text, "reviewed_by": text, "confidence": -0.5})
    parsed = list(csv.DictReader(io.StringIO(render_csv([row]))))
    assert parsed[0]["model"] == "'" + text
    assert parsed[0]["reviewed_by"] == "'" + text
    # Numbers are numbers, not text a spreadsheet would run.
    assert parsed[0]["confidence"] == "-0.5"
