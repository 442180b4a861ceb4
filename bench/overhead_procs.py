"""The servers a benchmark starts (bench/overhead.py, bench/fleet/): processes, ports,
readiness, and stopping them on SIGTERM too.

Servers under test run on ``SERVER_CPU``; nginx, wrk and py-spy on ``LOAD_CPU``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO

SERVER_CPU = "0"
LOAD_CPU = "1"


class BenchError(Exception):
    """The benchmark cannot go on: a tool is missing or a server did not come up."""


class GatewayDown(BenchError):
    """`hitl serve` did not come up; the other targets can still be measured."""


class Processes:
    """Every server the benchmark starts; ``stop_all`` ends them, whatever happened.

    Each child gets its own session so a terminal Ctrl-C reaches only this script,
    which then stops the children in order, by process group id.
    """

    def __init__(self, logdir: Path, *, pin: bool) -> None:
        self.logdir = logdir
        self.pin = pin
        self._running: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("wb")
        command = ["taskset", "-c", cpu, *argv] if self.pin else list(argv)
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._running.append((name, proc, log))
        return proc

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self._running):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc, log in reversed(self._running):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
            log.close()
        self._running.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def wait_until_up(
    procs: Processes,
    name: str,
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    body: bytes | None = None,
    timeout_s: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} before serving; "
                f"its log ({procs.logdir / (name + '.log')}):\n{procs.log_tail(name)}"
            )
        try:
            status, _, _ = http(url, body, timeout=2.0)
            # Up, even if the answer is wrong: check_answer says what is wrong with it.
            if status not in (502, 503, 504):
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{name} did not answer 200 at {url} within {timeout_s:g} s ({last}); "
        f"its log:\n{procs.log_tail(name)}"
    )


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` that stops the servers runs."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
