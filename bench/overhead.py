"""Proxy overhead benchmark (issues 2 and 13).

Starts nginx as a fast fake OpenAI upstream, then measures with wrk, in one run and
interleaved (round r runs every target once), requests/s, p50/p99 latency and the
server's CPU time per request at each connection count for:

  (a)  direct      nginx itself
  (b)  aiohttp     bare Starlette passthrough, one aiohttp.ClientSession (the floor)
  (b2) httpx-aio   the same over httpx.AsyncClient + httpx_aiohttp.AiohttpTransport
  (b3) httpx       the same over plain httpx
  (c)  gateway     hitl serve --config bench/gateway_bench.toml: recording on, and scoring
                   with a model trained on --labels votes first (untrained, it skips
                   prediction)

each for a JSON reply and a streamed (SSE) reply of each --reply-words length. Servers
under test run on CPU 0 (taskset), nginx and wrk on CPU 1, every Python server on
uvicorn with uvloop and httptools.

The acceptance run (the defaults: aiohttp and gateway, JSON and SSE, -c1 and -c16, 50
and 1,000 words, three interleaved 8-second runs, about 8 minutes) evaluates issue 13's
targets (overhead_criteria.py): at -c16, JSON req/s >= 0.40 x the floor's at 50 words
and >= 0.33 at 1,000, streamed >= 0.45 at 50; CPU per request <= 2.5 x the floor's at
50 words; the cost per reply word the gateway adds (its slope of CPU per request over
reply length minus the floor's) <= 0.5 µs; at -c1, the gateway's p50 minus the floor's
<= the commit's own median (measured here, overhead_fsync.py) + 1 ms; no non-2xx answer
or socket error. Exit status: 0 all met, 1 one not met, 2 one not evaluated.

    python bench/overhead.py                      # the acceptance run
    python bench/overhead.py --quick              # 2-second single runs, a smoke test
    python bench/overhead.py --targets direct,aiohttp,httpx-aio,httpx,gateway --connections 1,16,64
    python bench/overhead.py --profile 10         # then py-spy on the gateway at -c16

Needs nginx, wrk and taskset: ``apt-get install -y nginx wrk util-linux``.

This file is the command line and the run; beside it, ``overhead_wire.py`` (what the
fake upstream answers and wrk sends), ``overhead_procs.py`` (the servers started),
``overhead_targets.py`` (the targets, checked and given votes), ``overhead_load.py``
(wrk runs, summaries, tables), ``overhead_fsync.py`` (the commit's own wait),
``overhead_criteria.py`` (cost per word, the targets' verdicts) and
``overhead_profile.py`` (``--profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from overhead_criteria import (
    ACCEPT_DURATION,
    ACCEPT_RUNS,
    evaluate,
    exit_status,
    print_checks,
    print_word_costs,
    word_costs,
)
from overhead_criteria import as_json as check_json
from overhead_fsync import FsyncFigures, commit_median_ms, describe, measure_fsync
from overhead_fsync import as_json as fsync_json
from overhead_load import (
    ACCEPT_CONNS,
    Sample,
    print_ratios,
    print_table,
    ratios,
    run_wrk,
    summarise,
)
from overhead_procs import (
    LOAD_CPU,
    SERVER_CPU,
    BenchError,
    GatewayDown,
    Processes,
    interrupts_as_keyboard,
)
from overhead_profile import profile_gateway
from overhead_targets import FAMILIES, seed_labels, start_servers
from overhead_wire import MODES, payloads, reply_text

DEFAULT_TARGETS = "aiohttp,gateway"
DEFAULT_WORDS = "50,1000"


def missing_tools() -> list[str]:
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]


def can_pin() -> bool:
    return {0, 1} <= os.sched_getaffinity(0)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Proxy overhead benchmark: nginx, bare passthroughs and the gateway.",
        epilog=f"Acceptance: the defaults (--duration {ACCEPT_DURATION} --runs {ACCEPT_RUNS}) "
        "evaluate issue 13's targets against the aiohttp floor; see overhead_criteria.py.",
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 8)")
    parser.add_argument("--runs", type=int, help="interleaved runs per target (default 3)")
    parser.add_argument("--connections", default="1,16", help="comma list (default 1,16)")
    parser.add_argument(
        "--targets",
        default=DEFAULT_TARGETS,
        help=f"comma list of families: {', '.join(FAMILIES)} (default {DEFAULT_TARGETS})",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="json, sse or both")
    parser.add_argument(
        "--reply-words",
        default=DEFAULT_WORDS,
        help="comma list of upstream reply lengths in words, each measured in the same "
        f"interleaved run (default {DEFAULT_WORDS}); the cost per word is the slope over them",
    )
    parser.add_argument("--quick", action="store_true", help="2-second single runs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="SECONDS",
        default=0,
        help="after the runs, py-spy the JSON gateway (else the streamed one; first reply "
        "length) for SECONDS under wrk -c16",
    )
    parser.add_argument(
        "--labels",
        type=int,
        default=20,
        help="votes given to each gateway before the load, so its model is trained and "
        "predicts on every request (default 20; 0 measures an untrained model, which "
        "skips prediction)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a gateway setting for this run, e.g. store.lose_recent_on_power_loss=true "
        "(repeatable; given to each gateway as HITL_SECTION_KEY)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, dbs)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else ACCEPT_DURATION)
    args.runs = args.runs or (1 if args.quick else ACCEPT_RUNS)
    pairs = [item.partition("=") for item in args.set]
    if any(not sep or "." not in name for name, sep, _ in pairs):
        parser.error("--set takes SECTION.KEY=VALUE, e.g. store.lose_recent_on_power_loss=true")
    args.set = [(name, value) for name, _, value in pairs]
    try:
        args.connections = _ints(args.connections)
        args.reply_words = _ints(args.reply_words)
    except ValueError as exc:
        parser.error(f"--connections and --reply-words take comma lists of integers ({exc})")
    args.targets = [t for t in args.targets.split(",") if t]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.targets) - set(FAMILIES) | set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown target or mode {sorted(unknown)}; targets {FAMILIES}, modes {MODES}")
    if args.duration < 1 or args.runs < 1 or not args.connections or min(args.connections) < 1:
        parser.error("--duration, --runs and --connections must be positive")
    words = args.reply_words
    if not words or min(words) < 1 or len(set(words)) != len(words):
        parser.error(f"--reply-words needs distinct positive lengths (got {words})")
    if args.labels < 0:
        parser.error("--labels must be 0 or more")
    return args


def measure(args: argparse.Namespace, procs: Processes, workdir: Path, *, pin: bool) -> int:
    """Start, check and load every target; print the figures and the targets' verdicts."""
    answers = [payloads(reply_text(words)) for words in args.reply_words]
    try:
        targets = start_servers(procs, args.targets, args.modes, workdir, answers, args.set)
    except GatewayDown as exc:
        print(f"warning: {exc}\n-> measuring without the gateway", file=sys.stderr)
        procs.stop_all()
        others = [t for t in args.targets if t != "gateway"]
        targets = start_servers(procs, others, args.modes, workdir, answers)
    for target in targets:
        if target.family == "gateway" and args.labels:
            confidence = seed_labels(target, args.labels)
            print(
                f"{target.name}: {args.labels} votes learned, the model now scores the "
                f"benchmark reply {confidence:.3f}",
                file=sys.stderr,
            )
    # The gateways' SQLite files are in workdir: the same filesystem.
    fsync: list[FsyncFigures] = [measure_fsync(workdir / "fsync", when="before")]
    load_before = os.getloadavg()[0]
    print(
        f"{len(targets)} targets, -c {args.connections}, {args.runs} x {args.duration} s "
        f"each, servers on CPU {SERVER_CPU}, nginx+wrk on CPU {LOAD_CPU}"
        f"{'' if pin else ' (unpinned)'}; replies of {args.reply_words} words "
        f"({', '.join(str(len(a.chunks)) for a in answers)} chunks when streamed); "
        f"load average {load_before:.2f}; about "
        f"{len(targets) * len(args.connections) * args.runs * args.duration / 60:.1f} min of load",
        file=sys.stderr,
    )
    for target in targets:  # warm-up, not recorded
        run_wrk(target, ACCEPT_CONNS, 1, 0, workdir, pin=pin)
    samples: list[Sample] = []
    for run in range(1, args.runs + 1):
        for conns in args.connections:
            for target in targets:
                sample = run_wrk(target, conns, args.duration, run, workdir, pin=pin)
                samples.append(sample)
                print(
                    f"  run {run} -c{conns:<3} {target.name:<20} {sample.rps:>9,.0f} req/s"
                    f"  p99 {sample.p99_ms:7.2f} ms  {sample.cpu_us_per_req:6.0f} µs CPU/req",
                    file=sys.stderr,
                )
    fsync.append(measure_fsync(workdir / "fsync", when="after"))
    load_after = os.getloadavg()[0]
    summaries = summarise(samples)
    costs = word_costs(summaries)
    commit_ms = commit_median_ms(fsync)
    checks = evaluate(summaries, costs, commit_ms)
    print()
    print_table(summaries)
    print_ratios(ratios(summaries))
    print_word_costs(costs)
    print(f"\n{describe(fsync)}")
    print_checks(checks, duration=args.duration, runs=args.runs)
    print(
        f"load average before/after: {load_before:.2f}/{load_after:.2f} "
        "(other work on these two cores lowers every figure)"
    )
    errors = sorted({s.target for s in summaries if s.non_2xx or s.socket_errors})
    if errors:
        print(f"ERRORS (non-2xx answers or socket errors): {', '.join(errors)}")
    if args.json:
        figures = {
            "reply_words": args.reply_words,
            "duration_s": args.duration,
            "runs": args.runs,
            "samples": [asdict(s) for s in samples],
            "summaries": [asdict(s) for s in summaries],
            "ratios": ratios(summaries),
            "word_costs": {family: asdict(cost) for family, cost in costs.items()},
            "added_us_per_word": {
                family: cost.us_per_word - costs["aiohttp"].us_per_word
                for family, cost in costs.items()
                if "aiohttp" in costs and family != "aiohttp"
            },
            "fsync": [fsync_json(each) for each in fsync],
            "commit_ms_median": commit_ms,
            "targets": [check_json(check) for check in checks],
            "exit_status": exit_status(checks),
            "load_average": [load_before, load_after],
        }
        print(json.dumps(figures, indent=1))
    # The JSON gateway at the first reply length, or the streamed one when only it ran.
    profiled = [f"gateway-{mode}-w{args.reply_words[0]}" for mode in ("json", "sse")]
    gateway = next((t for name in profiled for t in targets if t.name == name), None)
    if args.profile and gateway is not None:
        profile_gateway(procs, gateway, args.profile, workdir, pin=pin)
    return exit_status(checks)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(
            f"missing {', '.join(missing)}: install with `apt-get install -y nginx wrk "
            "util-linux` (Debian/Ubuntu), then run again",
            file=sys.stderr,
        )
        return 2
    pin = can_pin()
    if not pin:
        print("warning: CPUs 0 and 1 are not both available; running unpinned", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="hitl-bench-"))
    procs = Processes(workdir, pin=pin)
    try:
        with interrupts_as_keyboard():
            status = measure(args, procs, workdir, pin=pin)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    # A run without the gateway (--targets aiohttp,httpx) measures only what it was asked.
    return status if "gateway" in args.targets else 0


if __name__ == "__main__":
    sys.exit(main())
