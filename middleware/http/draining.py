"""Shutting down without cutting anyone off: on SIGTERM the server stops accepting, running
streams get ``[server] shutdown_grace_s`` to finish, then end themselves cleanly (a last
chunk saying ``incomplete``, then ``[DONE]``) and are recorded like any other. Clients
waiting for a reviewer (holds) wait through the grace too, then get the fallback
(``at_expiry``): the server would otherwise cut them off with nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from middleware.tasks import cancelled

log = logging.getLogger("hitl")

Closer = Callable[[], Awaitable[None]]


class Draining:
    def __init__(
        self,
        grace_s: float,
        *,
        tick_s: float = 0.25,
        at_expiry: Callable[[], None] | None = None,
    ) -> None:
        self.grace_s = grace_s
        self.tick_s = tick_s
        self.at_expiry = at_expiry
        #: when running streams must end (None: not shutting down)
        self.deadline: float | None = None
        self._open: dict[int, Closer] = {}
        self._watch: asyncio.Task[None] | None = None
        self._previous: dict[int, Any] = {}

    def begin(self) -> None:
        """Called from the server's signal handler: only sets a value, so it is safe there."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace_s

    @property
    def expired(self) -> bool:
        """Past the grace period: a stream stops reading the upstream and ends now."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def track(self, key: int, close: Closer) -> None:
        """A stream is reading its upstream; ``close()`` ends that read at expiry."""
        self._open[key] = close

    def untrack(self, key: int) -> None:
        self._open.pop(key, None)

    def start(self) -> None:
        if self._watch is None:
            self._watch = asyncio.create_task(self._run(), name="hitl-draining")
            self._chain_signals()

    async def stop(self) -> None:
        await cancelled(self._watch)
        self._watch = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _chain_signals(self) -> None:
        """Run ``begin`` ahead of the server's own SIGTERM/SIGINT handler (uvicorn's, in
        one process or in each worker of a fleet), so streams hear of the shutdown the
        moment it starts, not when the server gets round to the lifespan."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread gets signals (a test's server thread)
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue  # nobody stops on it here: leave it alone

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                self.begin()
                previous(signum, frame)

            self._previous[sig] = previous
            signal.signal(sig, handler)

    async def _run(self) -> None:
        announced = False
        while True:
            await asyncio.sleep(self.tick_s)
            if self.deadline is not None and not announced:
                announced = True
                log.info(
                    "shutting down: %d running streams have %.0fs to finish",
                    len(self._open),
                    self.grace_s,
                )
            if self.expired:
                if self.at_expiry is not None:
                    self.at_expiry()
                    self.at_expiry = None  # once
                # A silent upstream would keep its stream waiting: end the read itself.
                for close in list(self._open.values()):
                    with contextlib.suppress(Exception):
                        await close()
                self._open.clear()
