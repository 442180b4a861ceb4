"""A real ``hitl serve`` process for tests: its own config file, environment and port,
its stderr kept in a file for assertions."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the gateway's variables (and secrets), plus ``extra``."""
    dropped = (
        "OPENAI_API_KEY",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
        "FORWARDED_ALLOW_IPS",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_") and k not in dropped}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.output()


@contextlib.contextmanager
def serve(
    tmp_path: Path, config: str, *, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[GatewayProcess]:
    """``hitl serve --config <config>`` on a free port, up (``/healthz`` 200) before the
    body runs, interrupted (Ctrl-C) after it."""
    path = tmp_path / "config.toml"
    path.write_text(config, encoding="utf-8")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "middleware.cli", "serve", "--config", str(path),
             "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(**(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    gateway = GatewayProcess(process, port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"hitl serve exited early:\n{gateway.output()}")
            try:
                if httpx.get(gateway.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"hitl serve did not come up:\n{gateway.output()}")
            time.sleep(0.1)
        yield gateway
    finally:
        gateway.stop()
