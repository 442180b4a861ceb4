"""Real ``hitl serve`` processes from a config file, and waiting for a condition.

``free_port`` is re-exported from ``tests.support.processes``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import free_port


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def serve_config(config: Path, port: int, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    log = cwd / "serve.log"
    with log.open("ab") as stderr:
        command = ["serve", "--config", str(config), "--port", str(port)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "middleware.cli", *command],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert wait_for(ready, timeout=30.0)
    assert proc.poll() is None, log.read_text()
    return proc


__all__ = ["free_port", "serve_config", "wait_for"]
