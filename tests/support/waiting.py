"""Waiting for a condition (``hitl serve`` processes: ``tests.support.fleet``)."""

from __future__ import annotations

import time
from typing import Any


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


__all__ = ["wait_for"]
