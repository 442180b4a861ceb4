"""The configurations and the criterion; medians over the rounds, the verdict, and the
printed tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .sample import Sample

CONFIGS = ("sqlite-1", "sqlite-2", "pg-1", "pg-2")
#: the criterion: FLEET's CPU per request at most CPU_LIMIT x BASELINE's
BASELINE, FLEET = "pg-1", "pg-2"
CPU_LIMIT = 1.1


@dataclass(frozen=True)
class Summary:
    config: str
    workers: int
    runs: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    transport_errors: int
    cpu_us_per_req: float
    cpu_min: float
    cpu_max: float
    learner_us_per_req: float | None
    db_us_per_req: float | None
    db_commits_per_req: float | None
    load_us_per_req: float
    upstream_us_per_req: float
    machine_idle: float
    machine_others: float
    lost: int


def summarise(samples: Sequence[Sample]) -> list[Summary]:
    out = []
    for name in CONFIGS:
        group = [s for s in samples if s.config == name]
        if not group:
            continue

        def median(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known else None

        out.append(
            Summary(
                config=name,
                workers=group[0].workers,
                runs=len(group),
                rps=statistics.median(s.rps for s in group),
                rps_min=min(s.rps for s in group),
                rps_max=max(s.rps for s in group),
                p50_ms=statistics.median(s.p50_ms for s in group),
                p99_ms=statistics.median(s.p99_ms for s in group),
                max_ms=max(s.max_ms for s in group),
                non_2xx=sum(s.non_2xx for s in group),
                transport_errors=sum(s.transport_errors for s in group),
                cpu_us_per_req=statistics.median(s.cpu_us_per_req for s in group),
                cpu_min=min(s.cpu_us_per_req for s in group),
                cpu_max=max(s.cpu_us_per_req for s in group),
                learner_us_per_req=median([s.learner_us_per_req for s in group]),
                db_us_per_req=median([s.db_us_per_req for s in group]),
                db_commits_per_req=median([s.db_commits_per_req for s in group]),
                load_us_per_req=statistics.median(s.load_us_per_req for s in group),
                upstream_us_per_req=statistics.median(s.upstream_us_per_req for s in group),
                machine_idle=statistics.median(s.machine_idle for s in group),
                machine_others=statistics.median(s.machine_others for s in group),
                lost=sum(s.lost for s in group),
            )
        )
    return out


@dataclass(frozen=True)
class Verdict:
    evaluated: bool
    rps_ratio: float
    cpu_ratio: float
    cpu_holds: bool
    lost: int
    text: str


def verdict(summaries: Sequence[Summary], *, duration: float, rounds: int) -> Verdict:
    lost = sum(s.lost for s in summaries)
    by = {s.config: s for s in summaries}
    base, fleet = by.get(BASELINE), by.get(FLEET)
    if base is None or fleet is None:
        return Verdict(False, 0.0, 0.0, False, lost, f"not evaluated: needs {BASELINE}, {FLEET}")
    rps_ratio = fleet.rps / base.rps
    cpu_ratio = fleet.cpu_us_per_req / base.cpu_us_per_req
    holds = cpu_ratio <= CPU_LIMIT
    text = (
        f"{FLEET}/{BASELINE}: req/s {rps_ratio:.2f} x, CPU per request {cpu_ratio:.2f} x "
        f"(needs <= {CPU_LIMIT}): {'HOLDS' if holds else 'DOES NOT HOLD'}"
    )
    if (duration, rounds) != (20, 3):
        text += (
            f" (indicative: the criterion is --duration 20 --rounds 3, this was "
            f"{duration:g} s x {rounds})"
        )
    return Verdict(True, rps_ratio, cpu_ratio, holds, lost, text)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_table(summaries: Sequence[Summary], refused: str | None) -> None:
    header = (
        f"{'config':<9} {'workers':>7} {'req/s':>6} {'min-max':>11} {'p50 ms':>6} "
        f"{'p99 ms':>6} {'non-2xx':>7} {'transport':>9} {'cpu us/req':>10} {'min-max':>11} "
        f"{'learner':>7} {'pg us':>5} {'lost':>4}"
    )
    print(header)
    print("-" * len(header))
    rows: list[tuple[str, Summary | None]] = [(s.config, s) for s in summaries]
    if refused is not None:
        at = next((i for i, (n, _) in enumerate(rows) if n != "sqlite-1"), len(rows))
        rows.insert(at, ("sqlite-2", None))
    for name, s in rows:
        if s is None:
            print(f"{name:<9} {2:>7} {refused}")
            continue
        flag = "  <-- errors" if s.non_2xx or s.transport_errors or s.lost else ""
        print(
            f"{name:<9} {s.workers:>7} {s.rps:>6,.0f} {s.rps_min:>5,.0f}-{s.rps_max:<5,.0f} "
            f"{s.p50_ms:>6.1f} {s.p99_ms:>6.1f} {s.non_2xx:>7} {s.transport_errors:>9} "
            f"{s.cpu_us_per_req:>10,.0f} {s.cpu_min:>5,.0f}-{s.cpu_max:<5,.0f} "
            f"{_us(s.learner_us_per_req):>7} {_us(s.db_us_per_req):>5} {s.lost:>4}{flag}"
        )
    print(
        "\ncpu us/req: the gateway's processes, all of them, per answered request; learner: "
        "the\nlearner process's part ('-': it learns inside the one process); pg us: "
        "PostgreSQL's\nbackends for the benchmark's database. The rest of the machine, "
        "medians:"
    )
    for s in summaries:
        commits = "" if s.db_commits_per_req is None else f"{s.db_commits_per_req:.2f}"
        print(
            f"  {s.config:<9} load generator {s.load_us_per_req:>4,.0f} us/req, upstream "
            f"{s.upstream_us_per_req:>4,.0f} us/req, other work {100 * s.machine_others:>2.0f}%"
            f" and idle {100 * s.machine_idle:>2.0f}% of both cores"
            + (f", {commits} PostgreSQL commits/req" if commits else "")
        )


def print_runs(samples: Sequence[Sample]) -> None:
    print("\nruns (acknowledged/stored include the warm-up):")
    for s in samples:
        shares = "/".join(f"{100 * x:.0f}%" for x in s.worker_shares)
        conns = "/".join(map(str, s.worker_connections))
        print(
            f"  r{s.round} {s.config:<9} {s.rps:>5,.0f} req/s, cpu {s.cpu_us_per_req:>5,.0f} "
            f"us/req, p99 {s.p99_ms:5.1f} ms (max {s.max_ms:,.0f}), "
            f"per worker: cpu {shares}, connections {conns}"
        )
        print(
            f"     chats {s.acked['chat']}/{s.stored['exchange']}, votes "
            f"{s.acked['vote']}/{s.stored['feedback']}, labels served "
            f"{','.join(map(str, s.model_labels))} of {s.stored['label']}"
            + (f" ({s.unlearned_labels} skipped for good)" if s.unlearned_labels else "")
            + "; decisions "
            + ", ".join(f"{k} {v}" for k, v in sorted(s.decisions.items()))
            + (f"; {s.log_problems} error lines in its log" if s.log_problems else "")
        )
        for key, count in sorted({**s.statuses, **s.transport}.items()):
            print(f"      {key}: {count}  {s.bodies.get(key, '')[:160]}")
