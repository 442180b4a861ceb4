"""One measured run's figures (``Sample``), computed from the load's answer, the /proc
snapshots around it and the rows stored after it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .procfs import TICK


@dataclass(frozen=True)
class Sample:
    config: str
    workers: int
    round: int
    duration_s: float
    answered: int
    rps: float
    chats_ok: int
    votes_ok: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    chat_p99_ms: float
    vote_p99_ms: float
    non_2xx: int
    transport_errors: int
    #: the gateway's processes (all of them) per answered request
    cpu_us_per_req: float
    #: the learner process's part of it (None: the learner runs inside the one process)
    learner_us_per_req: float | None
    #: each worker's CPU time over the run's wall time
    worker_shares: list[float]
    #: the clients' connections each worker held a second into the run
    worker_connections: list[int]
    #: PostgreSQL's backends serving the benchmark's database, per request
    db_us_per_req: float | None
    #: PostgreSQL transactions committed per answered request (None on SQLite)
    db_commits_per_req: float | None
    load_us_per_req: float
    upstream_us_per_req: float
    #: the share of both cores that was idle during the run
    machine_idle: float
    #: the share of both cores other work on the machine took during the run
    machine_others: float
    acked: dict[str, int]
    stored: dict[str, int]
    lost: int
    unacked_stored: int
    #: labels each serving process's model learned, a few seconds after the run
    model_labels: list[int]
    #: labels below a model's newest learned id it never learned (skipped for good)
    unlearned_labels: int
    statuses: dict[str, int]
    transport: dict[str, int]
    bodies: dict[str, str]
    decisions: dict[str, int]
    log_problems: int


def sample(
    name: str,
    workers: int,
    rnd: int,
    warm: dict[str, Any],
    measured: dict[str, Any],
    who: dict[int, str],
    stored: dict[str, int],
    model: dict[str, Any],
    log: str,
) -> Sample:
    before, after = measured["before"], measured["after"]
    answered = measured["answered"] or 1
    wall = after["at"] - before["at"]

    def spent(part: str, pids: Sequence[int] | None = None) -> float:
        """CPU seconds of ``part``'s processes between the snapshots."""
        now, then = after[part], before[part]
        chosen = now if pids is None else pids
        return sum(now.get(p, 0) - then.get(p, 0) for p in chosen) / TICK

    learners = [pid for pid, role in who.items() if role == "learner"]
    workers_ = [pid for pid, role in who.items() if role in ("worker", "server")]
    acked = {
        "chat": warm["ok"].get("chat", 0) + measured["ok"].get("chat", 0),
        "vote": warm["ok"].get("vote", 0) + measured["ok"].get("vote", 0),
    }
    lost = max(0, acked["chat"] - stored["exchange"]) + max(0, acked["vote"] - stored["feedback"])
    unacked = max(0, stored["exchange"] - acked["chat"]) + max(
        0, stored["feedback"] - acked["vote"]
    )
    charged, idle, total = (a - b for a, b in zip(after["machine"], before["machine"], strict=True))
    ours = spent("gateway") + spent("db") + spent("upstream") + measured["cpu_s"]
    statuses = Counter(warm["statuses"]) + Counter(measured["statuses"])
    transport = Counter(warm["transport"]) + Counter(measured["transport"])
    problems = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    return Sample(
        config=name,
        workers=workers,
        round=rnd,
        duration_s=measured["elapsed_s"],
        answered=measured["answered"],
        rps=measured["answered"] / measured["elapsed_s"],
        chats_ok=measured["ok"].get("chat", 0),
        votes_ok=measured["ok"].get("vote", 0),
        p50_ms=measured["p50_ms"],
        p99_ms=measured["p99_ms"],
        max_ms=measured["max_ms"],
        chat_p99_ms=measured["chat_p99_ms"],
        vote_p99_ms=measured["vote_p99_ms"],
        non_2xx=sum(statuses.values()),
        transport_errors=sum(transport.values()),
        cpu_us_per_req=1e6 * spent("gateway") / answered,
        learner_us_per_req=1e6 * spent("gateway", learners) / answered if learners else None,
        worker_shares=sorted((spent("gateway", [p]) / wall for p in workers_), reverse=True),
        worker_connections=sorted(
            (measured["connections"].get(p, 0) for p in workers_), reverse=True
        ),
        db_us_per_req=1e6 * spent("db") / answered if after["db"] else None,
        db_commits_per_req=(
            (after["commits"] - before["commits"]) / answered if after["db"] else None
        ),
        load_us_per_req=1e6 * measured["cpu_s"] / answered,
        upstream_us_per_req=1e6 * spent("upstream") / answered,
        machine_idle=idle / total if total else 0.0,
        machine_others=max(0.0, charged - ours * TICK) / total if total else 0.0,
        acked=acked,
        stored=stored,
        lost=lost,
        unacked_stored=unacked,
        model_labels=model["labels"],
        unlearned_labels=model["unlearned"],
        statuses=dict(statuses),
        transport=dict(transport),
        bodies={**warm["bodies"], **measured["bodies"]},
        decisions=dict(Counter(warm["decisions"]) + Counter(measured["decisions"])),
        log_problems=len(problems),
    )
