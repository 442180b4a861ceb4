"""bench/overhead.py's verdicts (overhead_criteria.py): pure decisions over made-up runs,
so a target is never reported MET by a wrong comparison, slope or exit status."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def criteria() -> Iterator[Any]:
    # The benchmark's modules import each other by their plain names, as when run.
    sys.path.insert(0, str(BENCH))
    try:
        import overhead_criteria
        import overhead_load

        yield overhead_criteria, overhead_load
    finally:
        sys.path.remove(str(BENCH))


def summary(load: Any, family: str, mode: str, words: int, conns: int, **figures: float) -> Any:
    values = {"rps": 1000.0, "p50_ms": 1.0, "cpu_us_per_req": 200.0, **figures}
    return load.Summary(
        target=f"{family}-{mode}-w{words}",
        family=family,
        mode=mode,
        words=words,
        conns=conns,
        runs=3,
        rps=values["rps"],
        rps_min=values["rps"],
        rps_max=values["rps"],
        p50_ms=values["p50_ms"],
        p99_ms=values["p50_ms"] * 3,
        non_2xx=int(figures.get("non_2xx", 0)),
        socket_errors=0,
        cpu_us_per_req=values["cpu_us_per_req"],
        cpu_share=0.9,
    )


def a_run(load: Any, *, gateway_rps: float, gateway_cpu: float, long_cpu: float) -> list[Any]:
    runs = []
    for mode in ("json", "sse"):
        for words in (50, 1000):
            runs.append(summary(load, "aiohttp", mode, words, 16, rps=1000, cpu_us_per_req=200))
            cpu = long_cpu if words == 1000 else gateway_cpu
            runs.append(
                summary(load, "gateway", mode, words, 16, rps=gateway_rps, cpu_us_per_req=cpu)
            )
    runs.append(summary(load, "aiohttp", "json", 50, 1, p50_ms=0.4))
    runs.append(summary(load, "gateway", "json", 50, 1, p50_ms=1.2))
    return runs


def test_a_run_that_meets_every_target_exits_0(criteria: Any) -> None:
    module, load = criteria
    runs = a_run(load, gateway_rps=500, gateway_cpu=400, long_cpu=500)
    checks = module.evaluate(runs, module.word_costs(runs), 0.3)
    assert all(check.met for check in checks), [c.line() for c in checks]
    assert module.exit_status(checks) == 0


def test_each_bound_is_compared_the_right_way(criteria: Any) -> None:
    module, load = criteria
    # req/s 0.35 of the floor's, CPU 3x, 0.8 us per word added: three targets missed.
    runs = a_run(load, gateway_rps=350, gateway_cpu=600, long_cpu=600 + 0.8 * 950)
    checks = module.evaluate(runs, module.word_costs(runs), 0.3)
    missed = {check.name for check in checks if check.met is False}
    assert any(name.startswith("json req/s") and "50 words" in name for name in missed)
    assert any(name.startswith("sse req/s") for name in missed)
    assert any(name.startswith("CPU per request") for name in missed)
    assert any(name.startswith("added cost per reply word") for name in missed)
    assert module.exit_status(checks) == 1
    word = next(c for c in checks if c.name.startswith("added cost per reply word"))
    assert word.measured == pytest.approx(0.8)


def test_the_latency_bound_is_the_commits_median_plus_1_ms(criteria: Any) -> None:
    module, load = criteria
    runs = a_run(load, gateway_rps=500, gateway_cpu=400, long_cpu=500)  # +0.8 ms at -c1
    for commit_ms, met in ((0.3, True), (0.0, True), (None, None)):
        checks = module.evaluate(runs, module.word_costs(runs), commit_ms)
        latency = next(c for c in checks if c.name.startswith("added p50"))
        assert latency.measured == (None if commit_ms is None else pytest.approx(0.8))
        assert latency.met is met
    runs[-1] = summary(load, "gateway", "json", 50, 1, p50_ms=2.0)  # +1.6 ms
    latency = next(
        c for c in module.evaluate(runs, module.word_costs(runs), 0.3) if "p50" in c.name
    )
    assert latency.met is False


def test_a_run_without_what_a_target_needs_is_not_evaluated(criteria: Any) -> None:
    module, load = criteria
    runs = [summary(load, "aiohttp", "json", 50, 16), summary(load, "gateway", "json", 50, 16)]
    checks = module.evaluate(runs, module.word_costs(runs), 0.3)
    assert any(check.met is None for check in checks)
    assert module.exit_status(checks) == 2
    assert module.slope([50, 1000], [200, 295]) == pytest.approx(0.1)
