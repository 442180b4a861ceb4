"""Several processes: ``hitl serve --workers N`` and ``hitl learner``.

``serve_fleet`` binds the port once and hands the socket to N uvicorn workers (uvicorn's
own supervisor: it restarts a worker that dies), each serving with ``role="serve"``, and
keeps one learner process beside them (restarted if it dies). ``run_learner`` is that
learner, or ``hitl learner`` on a host that only learns. On PostgreSQL any number of
learners may run: the advisory lock lets exactly one learn (``feedback_store.leadership``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from typing import Any

from middleware.app.worker import SPEC_ENV, FleetSpec
from middleware.settings import Settings

log = logging.getLogger("hitl")

#: a learner process that dies is started again after this long
RESTART_S = 1.0


async def run_learner(settings: Settings, environ: Mapping[str, str]) -> None:
    """Learn (or stand by to) until SIGTERM or SIGINT."""
    from middleware.app.parts import build_parts

    parts = build_parts(settings, environ=environ, role="learn")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await parts.start()
    state = "leading" if parts.learner.leading else "standing by (another learner leads)"
    log.info("learner started: %s, %d labels learned", state, parts.brain.labels)
    try:
        await stop.wait()
    finally:
        await parts.stop()
        log.info("learner stopped after %d labels", parts.brain.labels)


def learner_main(spec_json: str) -> None:
    """The learner child of ``serve_fleet`` (a fresh interpreter)."""
    from middleware.logs import configure

    environ = os.environ
    settings = FleetSpec.from_environ({SPEC_ENV: spec_json}).settings(environ)
    configure(settings.server.log_format)
    asyncio.run(run_learner(settings, environ))


class LearnerKeeper:
    """Keeps one learner child process running beside the workers."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.process: BaseProcess | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hitl-learner-keeper", daemon=True)

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=learner_main, args=(self.spec.dumps(),), name="hitl-learner"
        )
        self.process.start()
        log.info("learner process [%s] started", self.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(RESTART_S):
            process = self.process
            if process is not None and not process.is_alive():
                log.warning("learner process [%s] died (exit %s)", process.pid, process.exitcode)
                self._spawn()

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        self._thread.join(timeout=RESTART_S * 2)
        process = self.process
        if process is None:
            return
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join()


def serve_fleet(settings: Settings, spec: FleetSpec, config: Any, *, learner: bool) -> int:
    """``config.workers`` serving workers on one port (uvicorn's ``config``, its app the
    workers' factory), and a learner process unless ``learner`` is False."""
    from uvicorn.supervisors import Multiprocess

    # The workers are fresh interpreters: they read the spec from their environment.
    os.environ[SPEC_ENV] = spec.dumps()
    workers = config.workers
    sock = config.bind_socket()
    # Listening now, not when the first worker is up: a client that comes early waits in
    # the backlog for a worker instead of being refused.
    sock.listen(config.backlog)
    keeper = LearnerKeeper(spec) if learner else None
    log.info(
        "serving on http://%s:%d with %d workers%s",
        settings.server.host,
        sock.getsockname()[1],
        workers,
        " and a learner process" if learner else " (no learner here: run `hitl learner`)",
    )
    if keeper is not None:
        keeper.start()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        if keeper is not None:
            keeper.stop(timeout_s=settings.server.shutdown_grace_s + 10)
        sock.close()
    return 0
