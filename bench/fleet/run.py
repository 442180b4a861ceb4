"""One run of one configuration: a fresh store and gateway, the warm-up and the measured
load, the readings around it, then the stored rows and what the models learned."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overhead_procs import BenchError, Processes, free_port, http, wait_until_up

from .children import child_argv
from .procfs import connections, machine_ticks, pid_ticks, roles, session_ticks
from .sample import Sample, sample
from .stores import Postgres, sqlite_counts

#: the project's root: the gateway runs from there
ROOT = Path(__file__).resolve().parents[2]
#: what is counted after each run: chats, votes, and the labels the votes appended
TABLES = ("exchange", "feedback", "label")


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    upstream: str
    upstream_pid: int
    pg: Postgres | None

    def config_file(self, name: str, store: str, port: int) -> Path:
        path = self.workdir / f"{name}.toml"
        path.write_text(
            "[server]\n"
            f'host = "127.0.0.1"\nport = {port}\nfeedback_per_minute = 0\nlog_bodies = false\n'
            "[upstream]\n"
            f'kind = "openai"\nbase_url = "{self.upstream}/v1"\n'
            'api_key_env = "HITL_BENCH_UPSTREAM_KEY"\ntimeout_s = 30\n'
            f'[store]\nurl = "{store}"\n'
            "[slack]\nenabled = false\n"
        )
        return path

    def gateway_argv(self, config: Path, port: int, workers: int) -> list[str]:
        argv = [sys.executable, "-m", "middleware.cli", "serve", "--config", str(config)]
        return [*argv, "--port", str(port), "--workers", str(workers)]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
        env["PYTHONPATH"] = str(ROOT)
        env["HITL_BENCH_UPSTREAM_KEY"] = "bench-upstream-key"
        return env

    def refused(self) -> str:
        """Try `hitl serve --workers 2` on SQLite; return what it said."""
        port = free_port()
        config = self.config_file("sqlite-2", f"sqlite:///{self.workdir / 'refused.db'}", port)
        try:
            done = subprocess.run(
                self.gateway_argv(config, port, 2),
                env=self.env(),
                cwd=ROOT,
                capture_output=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "NOT refused: it was still serving after 30 s"
        said = done.stderr.decode(errors="replace").strip()
        if done.returncode != 0 and "SQLite serves one process" in said:
            return "refused (SQLite serves one process)"
        return f"unexpected: exit {done.returncode}: {said[-300:]}"

    def run(self, name: str, rnd: int) -> Sample:
        args = self.args
        kind, workers = name.split("-")[0], int(name.split("-")[1])
        port = free_port()
        if kind == "pg":
            if self.pg is None:
                raise BenchError(f"{name} needs PostgreSQL (--pg)")
            self.pg.create()
            store = self.pg.url()
        else:
            db = self.workdir / f"{name}-r{rnd}.db"
            store = f"sqlite:///{db}"
        procs = Processes(self.workdir, pin=False)
        label = f"gateway-{name}-r{rnd}"
        base = f"http://127.0.0.1:{port}"
        try:
            gateway = procs.start(
                label,
                self.gateway_argv(self.config_file(name, store, port), port, int(workers)),
                cpu="",
                env=self.env(),
                cwd=ROOT,
            )
            wait_until_up(procs, label, gateway, f"{base}/healthz", timeout_s=60)
            serving = wait_for_workers(base, int(workers))
            warm = self.load(base, args.warmup, seed=rnd * 2)
            measured = self.load(
                base, args.duration, seed=rnd * 2 + 1, gateway=gateway.pid, port=port
            )
            who = roles(gateway.pid, list(measured["after"]["gateway"]), port)
            stored = self.settle(store)
            served = model_labels(base, serving, stored["label"])
            unlearned = self.unlearned(store, served)
        finally:
            procs.stop_all()
            if kind == "pg" and self.pg is not None:
                self.pg.drop()
        log = (self.workdir / f"{label}.log").read_text(errors="replace")
        model = {"labels": [n for n, _ in served], "unlearned": unlearned}
        return sample(name, int(workers), rnd, warm, measured, who, stored, model, log)

    def load(
        self, base: str, duration: float, *, seed: int, gateway: int = 0, port: int = 0
    ) -> dict[str, Any]:
        """Run the load; with ``gateway`` (its session) take the readings around it, and
        count each process's connections a moment after the clients connected."""
        argv = child_argv("--load", base, "--clients", str(self.args.clients))
        argv += ["--duration", str(duration), "--votes-every", str(self.args.votes_every)]
        argv += ["--seed", str(seed)]
        errors = (self.workdir / "load.err").open("wb")
        with errors, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors) as proc:
            if proc.stdout is None:
                raise BenchError("the load's output is not a pipe")
            first = proc.stdout.readline()
            before = self.snapshot(gateway) if gateway else {}
            conns = {}
            if gateway and first.strip() == b"start":
                time.sleep(min(1.0, duration / 2))
                conns = connections(gateway, port)
            rest = proc.stdout.read()
            proc.wait(timeout=duration + 120)
            after = self.snapshot(gateway) if gateway else {}
        if proc.returncode != 0:
            said = (self.workdir / "load.err").read_text(errors="replace")[-600:]
            raise BenchError(f"the load failed (exit {proc.returncode}): {said}")
        figures: dict[str, Any] = json.loads(rest.decode().strip().splitlines()[-1])
        return {**figures, "before": before, "after": after, "connections": conns}

    def snapshot(self, session: int) -> dict[str, Any]:
        return {
            "at": time.monotonic(),
            "gateway": session_ticks(session),
            "db": pid_ticks(self.pg.backends()) if self.pg is not None else {},
            "commits": self.pg.commits() if self.pg is not None else 0,
            "upstream": pid_ticks([self.upstream_pid]),
            "machine": machine_ticks(),
        }

    def count(self, store: str, queries: Sequence[str]) -> list[int]:
        if store.startswith("postgresql") and self.pg is not None:
            return self.pg.counts(queries)
        return sqlite_counts(Path(store.removeprefix("sqlite:///")), queries)

    def settle(self, store: str) -> dict[str, int]:
        """The stored rows once two counts half a second apart agree."""
        queries = [f"SELECT count(*) FROM {table}" for table in TABLES]
        counts = self.count(store, queries)
        for _ in range(20):
            time.sleep(0.5)
            again = self.count(store, queries)
            if again == counts:
                break
            counts = again
        return dict(zip(TABLES, counts, strict=True))

    def unlearned(self, store: str, served: Sequence[tuple[int, int]]) -> int:
        """Labels at or below a process's newest learned label id that its model did not
        learn: skipped for good, since the learner reads labels after that id."""
        queries = [f"SELECT count(*) FROM label WHERE id <= {last}" for _, last in served]
        below = self.count(store, queries) if queries else []
        return max((n - labels for n, (labels, _) in zip(below, served, strict=True)), default=0)


def wait_for_workers(base: str, workers: int, timeout_s: float = 30.0) -> set[int]:
    """The pids answering /healthz once ``workers`` distinct ones have."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError, KeyError):
            status, _, body = http(f"{base}/healthz", timeout=2.0)
            if status == 200:
                seen.add(json.loads(body)["process"]["pid"])
        if len(seen) >= workers:
            return seen
        time.sleep(0.05)
    raise BenchError(f"only {len(seen)} of {workers} workers answered /healthz in {timeout_s:g} s")


def model_labels(
    base: str, pids: set[int], stored: int, timeout_s: float = 10.0
) -> list[tuple[int, int]]:
    """(labels learned, newest label id learned) of each serving process's model, waiting
    (up to ``timeout_s``) for all of them to have learned ``stored`` labels."""
    latest: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError, KeyError):
            status, _, body = http(f"{base}/healthz", timeout=2.0)
            answer = json.loads(body)
            if status == 200:
                model = answer["model"]
                latest[answer["process"]["pid"]] = (model["labels"], model["last_label_id"])
        if set(latest) >= pids and all(n >= stored for n, _ in latest.values()):
            break
        time.sleep(0.05)
    return sorted(latest.values())
