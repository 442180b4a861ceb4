"""The review card and the correction modal: pure functions, checked without Slack."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.slack.card import (
    APPROVE,
    CORRECT,
    CORRECTION_VIEW,
    MAX_BLOCKS,
    MAX_SECTION,
    REJECT,
    clip,
    correction_modal,
    escape,
    fallback_text,
    mention,
    parse_action,
    parse_correction,
    render_review_message,
)
from feedback_store import EscalationRow, ExchangeRow, FeedbackRow
from middleware.ports import ReviewItem
from middleware.review.items import build_item
from middleware.review.privacy import Redactor
from middleware.vocabulary import REASONS

EVIL = "hi <!channel> see <http://evil.example|click here> & <@U999> <!here>"


def item(**changes: Any) -> ReviewItem:
    values: dict[str, Any] = {
        "reply_id": "hitl-abc",
        "question": "How do I reset my password?",
        "answer": "Click 'Forgot password' on the sign-in page.",
        "confidence": 0.12,
        "threshold": 0.3,
        "reasons": ("confidence 0.12 < 0.3", "reply_len pulled the score down"),
        "model": "gpt-test",
    }
    values.update(changes)
    return ReviewItem(**values)


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    """Every text string in the blocks, wherever it sits."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(blocks)
    return found


def action_elements(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [el for block in blocks if block["type"] == "actions" for el in block["elements"]]


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a & b", "a &amp; b"),
        ("<!channel>", "&lt;!channel&gt;"),
        ("<http://evil|click>", "&lt;http://evil|click&gt;"),
        ("<@U123>", "&lt;@U123&gt;"),
        ("plain *bold* _it_", "plain *bold* _it_"),
        ("&amp;", "&amp;amp;"),
    ],
)
def test_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


def test_clip_never_cuts_an_entity_in_half() -> None:
    text = "x" * 8 + "&amp;" + "y" * 10
    for limit in range(9, 15):
        cut = clip(text, limit)
        assert len(cut) <= limit
        body = cut.removesuffix("…")
        assert "&" not in body or body.endswith("&amp;") or "&amp;" in body
        assert not body.endswith(("&", "&a", "&am", "&amp"))
    assert clip("short", 10) == "short"


def test_card_user_text_arrives_inert() -> None:
    card = item(question=EVIL, answer="reply: " + EVIL, complaint=EVIL, history=(("user", EVIL),))
    blocks = render_review_message(card)
    joined = "\n".join(texts(blocks))
    for live in ("<!channel>", "<!here>", "<http://evil.example|click here>", "<@U999>"):
        assert live not in joined
    assert "&lt;!channel&gt;" in joined
    assert "&lt;http://evil.example|click here&gt;" in joined
    fallback = fallback_text(card)
    assert "<!channel>" not in fallback and "&lt;!channel&gt;" in fallback


def test_card_explains_itself_and_offers_the_three_actions() -> None:
    blocks = render_review_message(
        item(history=(("user", "hello"), ("bot", "hi, how can I help?")))
    )
    joined = "\n".join(texts(blocks))
    assert "How do I reset my password?" in joined
    assert "Forgot password" in joined
    assert "0.12" in joined and "0.30" in joined  # confidence against the threshold
    assert "reply_len pulled the score down" in joined
    assert "hi, how can I help?" in joined  # a line of history
    elements = action_elements(blocks)
    assert [el["action_id"] for el in elements] == [APPROVE, REJECT, CORRECT]
    reject = elements[1]
    assert [o["text"]["text"] for o in reject["options"]] == list(REASONS)
    assert parse_action(elements[0]) == ("hitl-abc", None)
    assert parse_action({**reject, "selected_option": reject["options"][2]}) == (
        "hitl-abc",
        "unsafe",
    )
    assert parse_action(elements[2]) == ("hitl-abc", None)


def test_card_shows_a_complaint_and_a_hold() -> None:
    blocks = render_review_message(item(complaint="incorrect: it is wrong", hold=True))
    joined = "\n".join(texts(blocks))
    assert "incorrect: it is wrong" in joined
    assert "Held reply" in joined
    assert "the user waits" in joined


def test_decided_card_has_no_buttons_and_says_who_what_when() -> None:
    decided = item(
        state="rejected",
        decided_by="UREVIEWER1",
        decided_at=1_700_000_000.0,
        decision_reason="tone",
    )
    blocks = render_review_message(decided)
    assert action_elements(blocks) == []
    joined = "\n".join(texts(blocks))
    assert "Rejected" in joined and "<@UREVIEWER1>" in joined and "tone" in joined
    assert "<!date^1700000000^" in joined
    corrected = item(state="corrected", decided_by="ops-bot <!channel>", correction=EVIL)
    joined = "\n".join(texts(render_review_message(corrected)))
    # A reviewer name from the API is not a Slack id: it is shown, never parsed.
    assert "ops-bot &lt;!channel&gt;" in joined
    assert "<!channel>" not in joined
    assert "Corrected answer" in joined


def test_mention_only_formats_slack_user_ids() -> None:
    assert mention("U0123ABCD") == "<@U0123ABCD>"
    assert mention("W0123ABCD") == "<@W0123ABCD>"
    assert mention("<!channel>") == "&lt;!channel&gt;"
    assert mention(None) == "someone"


def test_long_text_is_cut_to_slack_limits() -> None:
    huge = "<" * 10_000  # escapes to 40,000 characters
    card = item(
        question=huge, answer="a" * 50_000, complaint="b" * 9_000, reasons=("r" * 5000,) * 3
    )
    blocks = render_review_message(card)
    assert len(blocks) <= MAX_BLOCKS
    for block in blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= MAX_SECTION
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert any(s.endswith("…") for s in sections)
    assert len(fallback_text(card)) <= 300


def test_many_history_lines_stay_within_limits() -> None:
    history = tuple(("user" if i % 2 else "bot", f"line {i} " * 50) for i in range(200))
    blocks = render_review_message(item(history=history))
    assert len(blocks) <= MAX_BLOCKS
    assert all(len(b["text"]["text"]) <= MAX_SECTION for b in blocks if b["type"] == "section")


def test_redaction_masks_before_anything_leaves() -> None:
    redact = Redactor([r"\b\d{4}-\d{4}-\d{4}-\d{4}\b", r"[\w.]+@[\w.]+"])
    card = item(
        question="my card is 1234-5678-9012-3456, mail me at ann@example.com",
        answer="I emailed ann@example.com",
        complaint="card 1234-5678-9012-3456",
        history=(("user", "I am ann@example.com"),),
    )
    blocks = render_review_message(card, redact=redact)
    modal = correction_modal(card, redact=redact)
    everything = json.dumps(blocks) + json.dumps(modal) + fallback_text(card, redact=redact)
    assert "1234-5678" not in everything
    assert "ann@example.com" not in everything
    assert "[redacted]" in everything


def test_correction_modal_round_trip() -> None:
    modal = correction_modal(item(answer="old answer"), channel="C1", ts="1.2")
    assert modal["callback_id"] == CORRECTION_VIEW
    element = modal["blocks"][-1]["element"]
    assert element["type"] == "plain_text_input"
    assert element["multiline"] is True
    assert element["initial_value"] == "old answer"
    submitted = {
        "private_metadata": modal["private_metadata"],
        "state": {"values": {"correction": {"text": {"type": "plain_text_input", "value": "new"}}}},
    }
    assert parse_correction(submitted) == ("hitl-abc", "new")
    assert json.loads(modal["private_metadata"]) == {
        "reply_id": "hitl-abc",
        "channel": "C1",
        "ts": "1.2",
    }
    with pytest.raises(ValueError):
        parse_correction({"private_metadata": "{}", "state": {}})


def test_correction_modal_input_is_cut_to_slacks_limit() -> None:
    modal = correction_modal(item(answer="z" * 10_000))
    assert len(modal["blocks"][-1]["element"]["initial_value"]) == 3000


@pytest.mark.parametrize(
    "action",
    [
        {"action_id": APPROVE},
        {"action_id": REJECT, "selected_option": {"value": "hitl-abc|nonsense"}},
    ],
)
def test_parse_action_refuses_foreign_actions(action: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_action(action)


def test_build_item_reads_the_stored_rows() -> None:
    exchange = ExchangeRow(
        id="hitl-1",
        question="q?",
        reply_text="a.",
        confidence=0.2,
        model="m",
        created_at=5.0,
        request_json=json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "be nice"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "answer one"},
                    {"role": "user", "content": "q?"},
                ]
            }
        ),
        reasons_json=json.dumps(["confidence 0.20 < 0.3"]),
    )
    escalation = EscalationRow(
        id=1, reply_id="hitl-1", created_at=5.0, state="posted", trigger="downvote", hold=False
    )
    feedback = FeedbackRow(
        id=1,
        reply_id="hitl-1",
        voter="user",
        rating="down",
        created_at=6.0,
        updated_at=6.0,
        reason="incorrect",
        comment="wrong city",
    )
    built = build_item(escalation, exchange, feedback, threshold=0.3)
    assert built.history == (("user", "first"), ("bot", "answer one"))
    assert built.complaint == "incorrect: wrong city"
    assert built.reasons[0] == "confidence 0.20 < 0.3"
    assert built.trigger == "downvote"
    assert not built.decided
