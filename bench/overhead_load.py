"""The load (bench/overhead.py): wrk runs, their figures, the summary and the verdict.

The server's CPU time is read from /proc around each run, so a figure per request
comes beside requests/s.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overhead_procs import LOAD_CPU, BenchError
from overhead_targets import FAMILIES, LABELS, Target
from overhead_wire import request_body, wrk_script

#: the connection count of the throughput targets, and of --profile
ACCEPT_CONNS = 16


@dataclass(frozen=True)
class Sample:
    target: str
    family: str
    mode: str
    words: int
    conns: int
    run: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    #: the server's CPU time (all threads, and child processes) per answered request
    cpu_us_per_req: float
    #: its CPU time over the run's wall time: under 1.0, it was not using all of its core
    cpu_share: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its direct children, from /proc."""
    total = 0
    pids = [pid]
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    for each in pids:
        with suppress(OSError):
            total += cpu_ticks(Path(f"/proc/{each}/stat"))
    return total / os.sysconf("SC_CLK_TCK")


def cpu_ticks(stat: Path) -> int:
    """User + system CPU time in clock ticks from a /proc ``stat`` file (process or thread)."""
    # Fields after the parenthesised command name; utime and stime are 14 and 15.
    fields = stat.read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def run_wrk(
    target: Target, conns: int, duration: int, run: int, workdir: Path, *, pin: bool
) -> Sample:
    report = workdir / f"wrk-{target.name}-c{conns}-r{run}.json"
    script = report.with_suffix(".lua")
    script.write_text(wrk_script(request_body(target.mode), report))
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s"]
    argv += ["-s", str(script), target.url]
    command = ["taskset", "-c", LOAD_CPU, *argv] if pin else argv
    cpu_before, wall_before = cpu_seconds(target.pid), time.monotonic()
    done = subprocess.run(command, capture_output=True, timeout=duration + 30, check=False)
    cpu = cpu_seconds(target.pid) - cpu_before
    wall = time.monotonic() - wall_before
    if done.returncode != 0 or not report.exists():
        raise BenchError(
            f"wrk failed on {target.name} (status {done.returncode}): "
            f"{done.stderr.decode(errors='replace')[-400:]}"
        )
    figures = json.loads(report.read_text())
    seconds = figures["duration_us"] / 1e6
    return Sample(
        target=target.name,
        family=target.family,
        mode=target.mode,
        words=target.words,
        conns=conns,
        run=run,
        requests=figures["requests"],
        rps=figures["requests"] / seconds if seconds else 0.0,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        # wrk counts answers with status > 399; a check before the load saw a 200.
        non_2xx=figures["status"],
        socket_errors=figures["connect"] + figures["read"] + figures["write"] + figures["timeout"],
        cpu_us_per_req=1e6 * cpu / figures["requests"] if figures["requests"] else 0.0,
        cpu_share=cpu / wall if wall else 0.0,
    )


@dataclass(frozen=True)
class Summary:
    target: str
    family: str
    mode: str
    words: int
    conns: int
    runs: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_us_per_req: float
    cpu_share: float


def summarise(samples: Sequence[Sample]) -> list[Summary]:
    groups: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[(sample.target, sample.conns)].append(sample)
    out = []
    for (target, conns), group in groups.items():
        out.append(
            Summary(
                target=target,
                family=group[0].family,
                mode=group[0].mode,
                words=group[0].words,
                conns=conns,
                runs=len(group),
                rps=statistics.median(s.rps for s in group),
                rps_min=min(s.rps for s in group),
                rps_max=max(s.rps for s in group),
                p50_ms=statistics.median(s.p50_ms for s in group),
                p99_ms=statistics.median(s.p99_ms for s in group),
                non_2xx=sum(s.non_2xx for s in group),
                socket_errors=sum(s.socket_errors for s in group),
                cpu_us_per_req=statistics.median(s.cpu_us_per_req for s in group),
                cpu_share=statistics.median(s.cpu_share for s in group),
            )
        )
    return out


def ratios(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """Each target over the aiohttp floor in the same mode, reply length and connections:
    req/s (target's over the floor's) and CPU per request (target's over the floor's:
    >= 1 means costlier)."""
    by_key = by_cell(summaries)
    rows = []
    for s in summaries:
        floor = by_key.get(("aiohttp", s.mode, s.words, s.conns))
        if floor is None or s.family in ("aiohttp", "direct"):
            continue
        rows.append(
            {
                "target": s.target,
                "family": s.family,
                "mode": s.mode,
                "words": s.words,
                "conns": s.conns,
                "rps_ratio": s.rps / floor.rps if floor.rps else 0.0,
                "cpu_ratio": (
                    s.cpu_us_per_req / floor.cpu_us_per_req if floor.cpu_us_per_req else 0.0
                ),
            }
        )
    return rows


def by_cell(summaries: Sequence[Summary]) -> dict[tuple[str, str, int, int], Summary]:
    """Summaries by (family, mode, reply words, connections)."""
    return {(s.family, s.mode, s.words, s.conns): s for s in summaries}


# --- output --------------------------------------------------------------------------


def print_table(summaries: Sequence[Summary]) -> None:
    order = {family: i for i, family in enumerate(FAMILIES)}
    rows = sorted(summaries, key=lambda s: (s.mode, s.words, s.conns, order[s.family]))
    header = (
        f"{'target':<24} {'conns':>5} {'req/s':>9} {'min-max':>15} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8} "
        f"{'cpu us/req':>10} {'cpu':>5}"
    )
    print(header)
    print("-" * len(header))
    previous: tuple[str, int, int] | None = None
    for s in rows:
        if previous is not None and previous != (s.mode, s.words, s.conns):
            print()
        previous = (s.mode, s.words, s.conns)
        label = f"{LABELS[s.family]} {s.target}"
        flag = "  <-- errors" if s.non_2xx or s.socket_errors else ""
        print(
            f"{label:<24} {s.conns:>5} {s.rps:>9,.0f} {s.rps_min:>7,.0f}-{s.rps_max:<7,.0f} "
            f"{s.p50_ms:>8.2f} {s.p99_ms:>8.2f} {s.non_2xx:>8} {s.socket_errors:>8} "
            f"{s.cpu_us_per_req:>10.0f} {100 * s.cpu_share:>4.0f}%{flag}"
        )


def print_ratios(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    print(
        "\nover the bare aiohttp passthrough (b), same mode, reply length and connections:"
        "\nreq/s (target's over (b)'s) and CPU per request (target's over (b)'s: >= 1 means"
        "\ncostlier; it moves less than req/s when other work shares the core):"
    )
    order = {family: i for i, family in enumerate(FAMILIES)}
    rows = sorted(rows, key=lambda r: (-order[r["family"]], r["mode"], r["words"], r["conns"]))
    for row in rows:
        label = f"{LABELS[row['family']]}/(b) {row['target']}"
        print(
            f"  {label:<30} -c{row['conns']:<3} req/s {row['rps_ratio']:6.3f}"
            f"   cpu/req {row['cpu_ratio']:6.3f}"
        )
