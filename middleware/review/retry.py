"""The review outbox's decisions (pure): when to retry a card, and whether a card may be
in the channel already so it is looked up before it is posted."""

from __future__ import annotations

from dataclasses import dataclass

from feedback_store import EscalationRow


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 300.0
    #: share of each delay that is random (0: none, 1: "full jitter")
    jitter: float = 0.5
    #: how long a claimed row is ours before another dispatcher may take it
    lease_s: float = 60.0
    #: look at the table at least this often, for rows other processes committed
    poll_s: float = 30.0
    batch: int = 20
    #: a stopping dispatcher waits this long for the row in hand before it lets go
    stop_grace_s: float = 3.0


def backoff_delay(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): doubling, capped, jittered.

    ``rand`` in [0, 1) picks the point within the jitter band.
    """
    raw = min(policy.cap_s, policy.base_s * 2.0 ** max(0, attempt - 1))
    return raw * (1.0 - policy.jitter) + raw * policy.jitter * rand


def retry_delay(attempt: int, retry_after: float | None, policy: RetryPolicy, rand: float) -> float:
    """A rate limit says how long to wait: never less than that, plus a little jitter so
    queued cards don't all return at once; other failures back off."""
    if retry_after is not None and retry_after >= 0:
        return retry_after + 0.1 * policy.base_s * rand
    return backoff_delay(attempt, policy, rand)


def may_be_in_channel(row: EscalationRow, left_clean: tuple[int, float] | None) -> bool:
    """Whether a pending row's card may be in the channel already, so it is looked up
    before it is posted (pure).

    ``row`` is as leased, with the ``next_attempt_at`` it was due at; ``left_clean`` is
    the (attempts, next_attempt_at) this process left it at, knowing no card was posted.
    Not in the channel: a row due since it was queued and never attempted, or one still
    as this process left it. Any other may be: an attempt whose answer was lost, a lease
    left by a process that died after posting, a retry another process scheduled.
    """
    if row.attempts == 0 and row.next_attempt_at == row.created_at:
        return False
    return left_clean != (row.attempts, row.next_attempt_at)
