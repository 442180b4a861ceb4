"""The targets of issue 13 (bench/overhead.py): each a measured figure, a bound, a verdict.

All are ratios or differences to the bare aiohttp passthrough (the floor) in the same
run. At 16 connections: JSON req/s at least 0.40 of the floor's at 50 words and 0.33 at
1,000 words, streamed at least 0.45 at 50 words, CPU per request at most 2.5 times the
floor's at 50 words (JSON), and the cost per extra reply word the gateway adds (its
slope of CPU per request over reply length minus the floor's, JSON) at most 0.5 µs. At
one connection, the gateway's p50 minus the floor's (JSON, 50 words) at most the
commit's own median (overhead_fsync.py) plus 1 ms. And no non-2xx answer or socket
error on any gateway target. Decisions only: the figures come in, checks go out.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from overhead_load import ACCEPT_CONNS, Summary, by_cell
from overhead_targets import LABELS

FLOOR = "aiohttp"
LATENCY_CONNS = 1
SHORT, LONG = 50, 1000
ACCEPT_DURATION, ACCEPT_RUNS = 8, 3
JSON_RPS_SHORT, JSON_RPS_LONG, SSE_RPS_SHORT = 0.40, 0.33, 0.45
CPU_RATIO_MAX = 2.5
WORD_COST_MAX_US = 0.5
LATENCY_SLACK_MS = 1.0


@dataclass(frozen=True)
class Check:
    name: str
    #: None: the run did not measure what the check needs (`detail` says what)
    measured: float | None
    bound: float
    #: True: met when measured >= bound; False: met when measured <= bound
    at_least: bool
    unit: str
    detail: str
    digits: int = 3

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.bound if self.at_least else self.measured <= self.bound

    def line(self) -> str:
        bound = f"{self.bound:.{min(self.digits, 2)}f}{self.unit}"
        needs = f"needs {'>=' if self.at_least else '<='} {bound}"
        if self.measured is None:
            return f"{self.name}: not evaluated ({needs}): {self.detail}"
        verdict = "MET" if self.met else "NOT MET"
        figure = f"{self.measured:.{self.digits}f}{self.unit}"
        return f"{self.name}: {figure} ({needs}): {verdict}; {self.detail}"


@dataclass(frozen=True)
class WordCost:
    """CPU per request over reply length for one family (JSON, -c16): the slope."""

    family: str
    words: tuple[int, ...]
    cpu_us: tuple[float, ...]
    us_per_word: float


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (two points: the difference quotient)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread


def word_costs(summaries: Sequence[Summary], *, conns: int = ACCEPT_CONNS) -> dict[str, WordCost]:
    """Each family's slope over the reply lengths measured, JSON, at `conns` connections."""
    points: dict[str, list[tuple[int, float]]] = {}
    for s in summaries:
        if s.mode == "json" and s.conns == conns and s.family != "direct":
            points.setdefault(s.family, []).append((s.words, s.cpu_us_per_req))
    out = {}
    for family, pairs in points.items():
        pairs.sort()
        if len(pairs) >= 2:
            words, cpu = zip(*pairs, strict=True)
            out[family] = WordCost(family, words, cpu, slope(words, cpu))
    return out


def evaluate(
    summaries: Sequence[Summary], costs: dict[str, WordCost], commit_ms: float | None
) -> list[Check]:
    """Every target of issue 13, evaluated on one run's summaries."""
    cell = by_cell(summaries)

    def pair(mode: str, words: int, conns: int) -> tuple[Summary, Summary] | str:
        gateway, floor = (
            cell.get(("gateway", mode, words, conns)),
            cell.get((FLOOR, mode, words, conns)),
        )
        if gateway is None or floor is None:
            return f"needs gateway and {FLOOR}, {mode}, --reply-words with {words}, -c{conns}"
        return gateway, floor

    checks = []
    for mode, words, bound in (
        ("json", SHORT, JSON_RPS_SHORT),
        ("json", LONG, JSON_RPS_LONG),
        ("sse", SHORT, SSE_RPS_SHORT),
    ):
        name = f"{mode} req/s over the floor's at -c{ACCEPT_CONNS}, {words} words"
        got = pair(mode, words, ACCEPT_CONNS)
        if isinstance(got, str):
            checks.append(Check(name, None, bound, True, "", got))
            continue
        gateway, floor = got
        ratio = gateway.rps / floor.rps if floor.rps else 0.0
        detail = f"gateway {gateway.rps:,.0f} / floor {floor.rps:,.0f} req/s"
        checks.append(Check(name, ratio, bound, True, "", detail))

    name = f"CPU per request over the floor's at -c{ACCEPT_CONNS}, json, {SHORT} words"
    got = pair("json", SHORT, ACCEPT_CONNS)
    if isinstance(got, str):
        checks.append(Check(name, None, CPU_RATIO_MAX, False, "", got))
    else:
        gateway, floor = got
        ratio = gateway.cpu_us_per_req / floor.cpu_us_per_req if floor.cpu_us_per_req else 0.0
        detail = f"gateway {gateway.cpu_us_per_req:,.0f} / floor {floor.cpu_us_per_req:,.0f} µs"
        checks.append(Check(name, ratio, CPU_RATIO_MAX, False, "", detail))

    name = f"added cost per reply word (gateway's slope minus the floor's), json, -c{ACCEPT_CONNS}"
    gateway_cost, floor_cost = costs.get("gateway"), costs.get(FLOOR)
    if gateway_cost is None or floor_cost is None:
        needs = f"needs gateway and {FLOOR}, json, -c{ACCEPT_CONNS}, two or more --reply-words"
        checks.append(Check(name, None, WORD_COST_MAX_US, False, " µs", needs))
    else:
        added = gateway_cost.us_per_word - floor_cost.us_per_word
        detail = (
            f"gateway {gateway_cost.us_per_word:.3f} - floor {floor_cost.us_per_word:.3f} "
            f"µs/word over {', '.join(map(str, gateway_cost.words))} words"
        )
        checks.append(Check(name, added, WORD_COST_MAX_US, False, " µs", detail))

    name = f"added p50 over the floor's at -c{LATENCY_CONNS}, json, {SHORT} words"
    got = pair("json", SHORT, LATENCY_CONNS)
    bound = (commit_ms or 0.0) + LATENCY_SLACK_MS
    if isinstance(got, str) or commit_ms is None:
        needs = got if isinstance(got, str) else "needs the commit's fsync median"
        checks.append(Check(name, None, bound, False, " ms", needs))
    else:
        gateway, floor = got
        detail = (
            f"gateway {gateway.p50_ms:.2f} - floor {floor.p50_ms:.2f} ms; bound: the commit's "
            f"median {commit_ms:.2f} ms + {LATENCY_SLACK_MS:g} ms"
        )
        checks.append(Check(name, gateway.p50_ms - floor.p50_ms, bound, False, " ms", detail))

    gateways = [s for s in summaries if s.family == "gateway"]
    name = "non-2xx answers and socket errors, every gateway target"
    if not gateways:
        checks.append(Check(name, None, 0, False, "", "needs the gateway"))
    else:
        errors = sum(s.non_2xx + s.socket_errors for s in gateways)
        bad = sorted(s.target for s in gateways if s.non_2xx or s.socket_errors)
        runs = sum(s.runs for s in gateways)
        detail = f"in {', '.join(bad)}" if bad else f"none in {runs} wrk runs of the gateway"
        checks.append(Check(name, errors, 0, False, "", detail, digits=0))
    return checks


def exit_status(checks: Sequence[Check]) -> int:
    """0 when every target is met, 1 when one is not, 2 when one was not evaluated."""
    if any(check.met is False for check in checks):
        return 1
    return 2 if any(check.met is None for check in checks) else 0


def print_word_costs(costs: dict[str, WordCost]) -> None:
    if not costs:
        return
    print(
        f"\ncost per reply word: the least-squares slope of CPU µs per request over reply "
        f"length, json, -c{ACCEPT_CONNS}:"
    )
    for family, cost in sorted(costs.items(), key=lambda item: item[0] != FLOOR):
        points = ", ".join(
            f"{w} words {c:,.0f} µs" for w, c in zip(cost.words, cost.cpu_us, strict=True)
        )
        print(f"  {LABELS[family]} {family:<10} {cost.us_per_word:7.3f} µs/word  ({points})")
    floor = costs.get(FLOOR)
    for family, cost in costs.items():
        if floor is not None and family != FLOOR:
            added = cost.us_per_word - floor.us_per_word
            target = " (the target applies to this)" if family == "gateway" else ""
            print(f"  added by {family} over the floor: {added:.3f} µs/word{target}")


def print_checks(checks: Sequence[Check], *, duration: int, runs: int) -> None:
    print("\ntargets (issue 13; one run, ratios to the bare aiohttp passthrough):")
    for check in checks:
        print(f"  {check.line()}")
    if (duration, runs) != (ACCEPT_DURATION, ACCEPT_RUNS):
        print(
            f"  (indicative: the targets are for --duration {ACCEPT_DURATION} --runs "
            f"{ACCEPT_RUNS}, this was {duration} s x {runs})"
        )
    met = sum(check.met is True for check in checks)
    print(f"targets met: {met} of {len(checks)}")


def as_json(check: Check) -> dict[str, object]:
    return {
        "name": check.name,
        "measured": check.measured,
        "bound": check.bound,
        "comparison": ">=" if check.at_least else "<=",
        "unit": check.unit.strip(),
        "met": check.met,
        "detail": check.detail,
    }
