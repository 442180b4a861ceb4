"""Proxy overhead benchmark (issue 2).

Starts nginx as a fast fake OpenAI upstream, then measures with wrk, in one run and
interleaved (round r runs every target once), requests/s and p50/p99 latency at each
connection count for:

  (a)  direct      nginx itself
  (b)  aiohttp     bare Starlette passthrough, one aiohttp.ClientSession (the floor)
  (b2) httpx-aio   the same over httpx.AsyncClient + httpx_aiohttp.AiohttpTransport
  (b3) httpx       the same over plain httpx
  (c)  gateway     hitl serve --config bench/gateway_bench.toml: recording on, and scoring
                   with a model trained on --labels votes first (untrained, it skips
                   prediction)

each for a JSON reply and a streamed (SSE) reply. Servers under test run on CPU 0
(taskset), nginx and wrk on CPU 1, every Python server on uvicorn with uvloop and
httptools.

Acceptance (issue 2): wrk -t1 -c16, three interleaved 8-second runs: the gateway (JSON)
reaches >= 0.25 x the requests/s of the bare aiohttp passthrough (medians of the runs),
with no non-2xx answer and no socket error. Exit status: 0 met, 1 not met, 2 not
evaluated (the gateway could not be measured).

    python bench/overhead.py                      # the acceptance run (about 13 min)
    python bench/overhead.py --quick              # 2-second single runs, a smoke test
    python bench/overhead.py --targets aiohttp,gateway --modes json --connections 16
    python bench/overhead.py --profile 10         # then py-spy on the gateway at -c16

Needs nginx, wrk and taskset: ``apt-get install -y nginx wrk util-linux``.

This file is the command line and the run; beside it, ``overhead_wire.py`` (what the
fake upstream answers and wrk sends), ``overhead_procs.py`` (the servers started),
``overhead_targets.py`` (the targets, checked and given votes), ``overhead_load.py``
(wrk runs, summary, verdict, tables) and ``overhead_profile.py`` (``--profile``).
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

from overhead_load import (
    ACCEPT_CONNS,
    ACCEPT_RATIO,
    Sample,
    Verdict,
    acceptance,
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


def missing_tools() -> list[str]:
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]


def can_pin() -> bool:
    return {0, 1} <= os.sched_getaffinity(0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Proxy overhead benchmark: nginx, bare passthroughs and the gateway.",
        epilog=f"Acceptance: -c{ACCEPT_CONNS}, --duration 8 --runs 3, gateway-json >= "
        f"{ACCEPT_RATIO} x aiohttp-json req/s, no non-2xx.",
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 8)")
    parser.add_argument("--runs", type=int, help="interleaved runs per target (default 3)")
    parser.add_argument("--connections", default="1,16,64", help="comma list (default 1,16,64)")
    parser.add_argument("--targets", default=",".join(FAMILIES), help="comma list of families")
    parser.add_argument("--modes", default=",".join(MODES), help="json, sse or both")
    parser.add_argument("--quick", action="store_true", help="2-second single runs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="SECONDS",
        default=0,
        help="after the runs, py-spy the JSON gateway for SECONDS under wrk -c16",
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
        "--reply-words",
        type=int,
        default=0,
        help="make the upstream's reply N words long (default: a fixed 44-word reply); "
        "the gateway's scoring cost grows with the reply",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, dbs)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 8)
    args.runs = args.runs or (1 if args.quick else 3)
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.targets = [t for t in args.targets.split(",") if t]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.targets) - set(FAMILIES) | set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown target or mode {sorted(unknown)}; targets {FAMILIES}, modes {MODES}")
    if args.duration < 1 or args.runs < 1 or not args.connections or min(args.connections) < 1:
        parser.error("--duration, --runs and --connections must be positive")
    if args.labels < 0:
        parser.error("--labels must be 0 or more")
    return args


def measure(args: argparse.Namespace, procs: Processes, workdir: Path, *, pin: bool) -> Verdict:
    answers = payloads(reply_text(args.reply_words))
    try:
        targets = start_servers(procs, args.targets, args.modes, workdir, answers)
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
    load_before = os.getloadavg()[0]
    print(
        f"{len(targets)} targets, -c {args.connections}, {args.runs} x {args.duration} s "
        f"each, servers on CPU {SERVER_CPU}, nginx+wrk on CPU {LOAD_CPU}"
        f"{'' if pin else ' (unpinned)'}; a {answers.words}-word reply, {len(answers.chunks)} "
        f"chunks when streamed; load average {load_before:.2f}",
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
                    f"  run {run} -c{conns:<3} {target.name:<16} {sample.rps:>9,.0f} req/s"
                    f"  p99 {sample.p99_ms:7.2f} ms",
                    file=sys.stderr,
                )
    load_after = os.getloadavg()[0]
    summaries = summarise(samples)
    verdict = acceptance(summaries, duration=args.duration, runs=args.runs)
    print()
    print_table(summaries)
    print_ratios(ratios(summaries))
    print(f"\nacceptance: {verdict.text}")
    print(
        f"load average before/after: {load_before:.2f}/{load_after:.2f} "
        "(other work on these two cores lowers every figure)"
    )
    errors = sorted({s.target for s in summaries if s.non_2xx or s.socket_errors})
    if errors:
        print(f"ERRORS (non-2xx answers or socket errors): {', '.join(errors)}")
    if args.json:
        figures = {
            "samples": [asdict(s) for s in samples],
            "summaries": [asdict(s) for s in summaries],
            "ratios": ratios(summaries),
            "acceptance": asdict(verdict),
            "load_average": [load_before, load_after],
        }
        print(json.dumps(figures, indent=1))
    gateway = next((t for t in targets if t.name == "gateway-json"), None)
    if args.profile and gateway is not None:
        profile_gateway(procs, gateway, args.profile, workdir, pin=pin)
    return verdict


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
            verdict = measure(args, procs, workdir, pin=pin)
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
    if not verdict.evaluated:
        return 2 if "gateway" in args.targets else 0
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
