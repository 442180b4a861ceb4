"""What a test's own processes share: a free port, an environment without the
gateway's variables, and ``GatewayProcess`` (a process, its port and its log). They are
started by ``tests.support.fleet`` (``start_serve``, ``serving``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
