"""One vocabulary: the chat page, the settings and the validators spell the same words."""

from __future__ import annotations

import re
from importlib import resources
from typing import get_args

from middleware import vocabulary as v


def static(name: str) -> str:
    return (resources.files("middleware") / "static" / name).read_text()


def test_each_literal_and_its_tuple_agree() -> None:
    pairs = [
        (v.DecisionKind, v.DECISION_KINDS),
        (v.Rating, v.RATINGS),
        (v.Reason, v.REASONS),
        (v.ReviewState, v.REVIEW_STATES),
        (v.Trigger, v.TRIGGERS),
        (v.LabelSource, v.LABEL_SOURCES),
        (v.Verdict, v.VERDICTS),
    ]
    for literal, words in pairs:
        assert get_args(literal) == words


def test_verdicts_map_onto_decided_states_and_labels() -> None:
    assert set(v.STATE_OF) == set(v.VERDICTS) == set(v.LABEL_OF)
    assert tuple(v.STATE_OF.values()) == v.DECIDED_STATES
    assert v.LABEL_OF == {"approve": 1, "reject": 0, "correct": 0}
    assert set(v.FINAL_STATES) <= set(v.REVIEW_STATES)
    assert set(v.AWAITING_STATES).isdisjoint(v.FINAL_STATES)


def test_the_chat_page_offers_exactly_the_reasons() -> None:
    offered = tuple(re.findall(r'name="reason" value="([^"]+)"', static("index.html")))
    assert offered == v.REASONS


def test_the_chat_page_knows_the_final_states() -> None:
    match = re.search(r"const DECIDED = \[([^\]]*)\]", static("app.js"))
    assert match is not None, "app.js no longer lists the final review states"
    assert tuple(re.findall(r'"([^"]+)"', match.group(1))) == v.FINAL_STATES


def test_the_chat_page_names_only_known_decisions_and_states() -> None:
    script = static("app.js")
    decisions = set(re.findall(r'decision === "([^"]+)"', script))
    states = set(re.findall(r'state [!=]== "([^"]+)"', script))
    assert decisions and decisions <= set(v.DECISION_KINDS)
    assert states and states <= set(v.REVIEW_STATES)
