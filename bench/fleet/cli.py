"""The command line (``python bench/fleet_load.py``): options, the interleaved rounds,
the printed figures and the exit status; and the hidden child modes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from overhead_procs import BenchError, Processes, free_port, interrupts_as_keyboard, wait_until_up

from .children import child_argv, load_main, serve_upstream
from .run import Bench
from .sample import Sample
from .stores import Postgres
from .summary import (
    BASELINE,
    CONFIGS,
    CPU_LIMIT,
    FLEET,
    print_runs,
    print_table,
    summarise,
    verdict,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fleet load benchmark: chats and votes against SQLite and PostgreSQL, "
        "one and two workers.",
        epilog=f"Criterion: {FLEET}'s CPU per request <= {CPU_LIMIT} x {BASELINE}'s; "
        "no acknowledgement lost.",
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (20)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each run (3)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (3)")
    parser.add_argument("--votes-every", type=int, default=3, help="chats per vote (3)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma list of configs")
    parser.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL the benchmark may create (and drop) its database on",
    )
    parser.add_argument("--reply-words", type=int, default=0, help="upstream reply length")
    parser.add_argument("--quick", action="store_true", help="one 3-second round")
    parser.add_argument("--json", action="store_true", help="the figures as JSON, last line")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, dbs)")
    # The benchmark's own children.
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown config {sorted(unknown)}; known: {', '.join(CONFIGS)}")
    if args.clients < 1 or args.duration <= 0 or args.rounds < 1 or args.votes_every < 1:
        parser.error("--clients, --duration, --rounds and --votes-every must be positive")
    return args


def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[Sample], str | None]:
    runnable = [c for c in args.configs if c != "sqlite-2"]
    pg = Postgres(args.pg) if any(c.startswith("pg") for c in runnable) else None
    upstreams = Processes(workdir, pin=False)
    try:
        port = free_port()
        argv = child_argv("--upstream", str(port))
        up = upstreams.start("upstream", [*argv, "--reply-words", str(args.reply_words)], cpu="")
        url = f"http://127.0.0.1:{port}"
        wait_until_up(upstreams, "upstream", up, f"{url}/v1/chat/completions", body=b"{}")
        bench = Bench(args, workdir, url, up.pid, pg)
        refused = bench.refused() if "sqlite-2" in args.configs else None
        if refused is not None:
            print(f"sqlite-2: {refused}", file=sys.stderr)
        print(
            f"{len(runnable)} configs x {args.rounds} rounds, {args.clients} clients, "
            f"{args.warmup:g} s warm-up + {args.duration:g} s each, {args.votes_every} chats "
            f"per vote; load average {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
        )
        samples = []
        for rnd in range(1, args.rounds + 1):
            order = runnable if rnd % 2 else runnable[::-1]
            for name in order:
                s = bench.run(name, rnd)
                samples.append(s)
                print(
                    f"  round {rnd} {name:<9} {s.rps:>6,.0f} req/s  p99 {s.p99_ms:6.1f} ms  "
                    f"cpu {s.cpu_us_per_req:5,.0f} us/req  lost {s.lost}",
                    file=sys.stderr,
                )
        return samples, refused
    finally:
        upstreams.stop_all()
        if pg is not None:
            pg.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upstream:
        serve_upstream(args.upstream, args.reply_words)
        return 0
    if args.load:
        load_main(args.load, args.clients, args.duration, args.votes_every, args.seed)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="hitl-fleet-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        with interrupts_as_keyboard():
            samples, refused = measure(args, workdir)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summaries = summarise(samples)
    result = verdict(summaries, duration=args.duration, rounds=args.rounds)
    print(
        f"\n{started}, {os.cpu_count()} cores, {args.clients} clients, "
        f"{args.rounds} x {args.duration:g} s per config, medians"
    )
    print_table(summaries, refused)
    print_runs(samples)
    print(f"\n{result.text}")
    print(f"lost acknowledgements: {result.lost}")
    skipped = [s for s in samples if s.unlearned_labels]
    if skipped:
        where = ", ".join(f"{s.config} r{s.round}: {s.unlearned_labels}" for s in skipped)
        print(
            f"WARNING: labels stored but never learned ({where}): the learner passed their "
            "ids before they were committed"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        figures = {
            "started": started,
            "cores": os.cpu_count(),
            "args": {k: v for k, v in vars(args).items() if k not in ("upstream", "load", "seed")},
            "refused": refused,
            "samples": [asdict(s) for s in samples],
            "summaries": [asdict(s) for s in summaries],
            "verdict": asdict(result),
        }
        print(json.dumps(figures))
    if result.lost:
        return 1
    if result.evaluated and not result.cpu_holds:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
