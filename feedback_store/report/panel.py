"""Several reviewers on one item: how far they agree, with each other and with the
decision their votes reached. Pure functions of the report's ``BallotRow`` rows (one
per ``review_vote``); a vote counts approve as 1 and reject or correct as 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import Any

from feedback_store.report.metrics import cohen_kappa, rate
from feedback_store.report.rows import BallotRow, ReviewRow
from feedback_store.vocabulary import DECIDED_STATES


def by_escalation(ballots: Iterable[BallotRow]) -> dict[int, list[BallotRow]]:
    """The votes per escalation, oldest first."""
    found: dict[int, list[BallotRow]] = defaultdict(list)
    for ballot in sorted(ballots, key=lambda b: b.at):
        found[ballot.escalation_id].append(ballot)
    return dict(found)


def vote_pairs(ballots: Iterable[BallotRow]) -> list[tuple[int, int]]:
    """(earlier vote, later vote) for every two reviewers who voted on one escalation."""
    return [
        (earlier.value, later.value)
        for item in by_escalation(ballots).values()
        for earlier, later in combinations(item, 2)
    ]


def reviewer_pairs(ballots: Iterable[BallotRow]) -> list[dict[str, Any]]:
    """Cohen's kappa of every two reviewers over the escalations both voted on (the
    reviewers in name order, the first one as the first rater)."""
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for item in by_escalation(ballots).values():
        value = {b.reviewer: b.value for b in item}
        for first, second in combinations(sorted(value), 2):
            pairs[(first, second)].append((value[first], value[second]))
    ordered = sorted(pairs.items(), key=lambda pair: (-len(pair[1]), pair[0]))
    return [
        {"reviewers": list(names), "items": len(shared), "kappa": cohen_kappa(shared)}
        for names, shared in ordered
    ]


def disagreements(ballots: Iterable[BallotRow]) -> int:
    """Escalations whose votes were not unanimous (approve against reject or correct)."""
    return sum(len({b.value for b in item}) > 1 for item in by_escalation(ballots).values())


def with_decision(
    ballots: Iterable[BallotRow], reviews: Iterable[ReviewRow]
) -> dict[str, tuple[int, int]]:
    """Per reviewer: (votes that agreed with the decision, votes on decided escalations)."""
    decided = {r.id: int(r.state == "approved") for r in reviews if r.state in DECIDED_STATES}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ballot in ballots:
        if ballot.escalation_id in decided:
            counts[ballot.reviewer][0] += ballot.value == decided[ballot.escalation_id]
            counts[ballot.reviewer][1] += 1
    return {reviewer: (agreed, total) for reviewer, (agreed, total) in counts.items()}


def votes_by_reviewer(ballots: Iterable[BallotRow]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for ballot in ballots:
        counts[ballot.reviewer] += 1
    return dict(counts)


def agrees_with_decision(agreed: Mapping[str, tuple[int, int]], reviewer: str) -> float | None:
    """The share of ``reviewer``'s votes (on decided items) that the decision agreed with."""
    hits, total = agreed.get(reviewer, (0, 0))
    return rate(hits, total)


def panel_summary(ballots: Iterable[BallotRow]) -> dict[str, Any]:
    """The report's figures on votes: kappa between reviewers, and split votes."""
    ballots = list(ballots)
    return {
        "votes": len(ballots),
        "reviewer_kappa": cohen_kappa(vote_pairs(ballots)),
        "reviewer_pairs": reviewer_pairs(ballots),
        "disagreements": disagreements(ballots),
    }
