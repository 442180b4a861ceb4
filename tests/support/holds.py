"""Held replies: the policy that holds every reply, and finding the held one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.waiting import wait_for

ADMIN = "admin-token-for-tests-0123456789"

FALLBACK = "A specialist will check this answer; please wait for them."

HOLD_ALL = {
    "prior": 0.1,
    "hold_below": 0.2,
    "risky_models": ["json"],
    "hold_fallback": FALLBACK,
    "hold_heartbeat_s": 0.2,
    "hold_poll_s": 0.2,
}


def held_reply_id(db: Path, question: str, timeout: float = 10.0) -> str:
    """The id of the held reply to ``question``, once it is on record."""

    def find() -> str | None:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT e.id FROM exchange e JOIN escalation s ON s.reply_id = e.id "
                "WHERE e.question = ? AND s.hold",
                (question,),
            ).fetchone()
        return None if row is None else str(row[0])

    found = wait_for(find, timeout=timeout)
    assert found, f"no held reply to {question!r}"
    return str(found)
