"""What every backend of shared counters answers: one sliding-window ``take``."""

from __future__ import annotations

import math
from typing import Protocol


class Quotas(Protocol):
    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        """Count one use of ``key`` under the limit ``name`` if that keeps its uses in the
        last ``window_s`` seconds within ``limit``: None when it is counted, else the whole
        seconds until one would be free (at least 1; nothing is counted then).

        Raises ``QuotaUnavailable`` when the counters cannot be reached.
        """
        ...

    async def aclose(self) -> None:
        """Let go of connections (the app's shutdown)."""
        ...


def whole_seconds(seconds: float) -> int:
    """A wait as ``Retry-After`` says it: whole seconds, at least one."""
    return max(1, math.ceil(seconds))
