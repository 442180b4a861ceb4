"""The commit's own wait (bench/overhead.py): what the one-connection latency target allows.

A JSON reply's last byte leaves only after its exchange is committed, so at one
connection the gateway's added latency includes a commit's fsync. The benchmark measures
that wait itself, on the filesystem that holds the gateway's SQLite files (a folder of
its temp dir): SQLite commits of one ~2 KB row each in WAL mode with
``synchronous=FULL`` (the gateway's pragmas, ``feedback_store/engine.py``), and beside
them a plain ``os.fsync`` after a 2 KB write, for reference.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

COMMITS = 200
ROW_BYTES = 2048


@dataclass(frozen=True)
class FsyncFigures:
    #: "before" or "after" the runs
    when: str
    #: seconds of each SQLite commit (BEGIN, INSERT, COMMIT), in order
    commit_s: tuple[float, ...]
    #: seconds of each plain os.fsync after a write
    fsync_s: tuple[float, ...]

    @property
    def commit_ms(self) -> float:
        return 1000 * statistics.median(self.commit_s)

    @property
    def commit_p90_ms(self) -> float:
        return 1000 * statistics.quantiles(self.commit_s, n=10)[-1]

    @property
    def fsync_ms(self) -> float:
        return 1000 * statistics.median(self.fsync_s)


def measure_fsync(folder: Path, *, when: str, count: int = COMMITS) -> FsyncFigures:
    """`count` timed SQLite commits and `count` timed plain fsyncs in `folder`."""
    folder.mkdir(exist_ok=True)
    # Text that does not repeat, so no layer below can make the row cheaper than a reply.
    draw = random.Random(13)
    rows = ["".join(draw.choices(string.ascii_letters, k=ROW_BYTES)) for _ in range(8)]
    db = sqlite3.connect(folder / f"commits-{when}.db", isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "secure_delete=ON"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE exchange (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        # The first commit creates the write-ahead log; it is not what a reply waits for.
        db.execute("INSERT INTO exchange (body) VALUES (?)", (rows[0],))
        commits = []
        for i in range(count):
            start = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO exchange (body) VALUES (?)", (rows[i % len(rows)],))
            db.execute("COMMIT")
            commits.append(time.perf_counter() - start)
    finally:
        db.close()
    fsyncs = []
    with (folder / f"fsync-{when}.bin").open("wb", buffering=0) as file:
        for i in range(count):
            file.write(rows[i % len(rows)].encode())
            start = time.perf_counter()
            os.fsync(file.fileno())
            fsyncs.append(time.perf_counter() - start)
    return FsyncFigures(when, tuple(commits), tuple(fsyncs))


def commit_median_ms(figures: Sequence[FsyncFigures]) -> float | None:
    """The median commit over every measurement (before and after pooled), in ms."""
    pooled = [s for each in figures for s in each.commit_s]
    return 1000 * statistics.median(pooled) if pooled else None


def describe(figures: Sequence[FsyncFigures]) -> str:
    if not figures:
        return "commit wait: not measured"
    parts = [
        f"{each.when}: commit median {each.commit_ms:.2f} ms (p90 {each.commit_p90_ms:.2f}), "
        f"os.fsync median {each.fsync_ms:.2f} ms"
        for each in figures
    ]
    pooled = commit_median_ms(figures)
    return (
        f"commit wait on this filesystem ({len(figures[0].commit_s)} SQLite commits of one "
        f"{ROW_BYTES // 1024} KB row, WAL, synchronous=FULL, and as many plain os.fsync, "
        f"before and after the runs): {'; '.join(parts)}; pooled commit median "
        f"{pooled:.2f} ms"
    )


def as_json(figures: FsyncFigures) -> dict[str, object]:
    return {
        "when": figures.when,
        "commits": len(figures.commit_s),
        "commit_ms_median": figures.commit_ms,
        "commit_ms_p90": figures.commit_p90_ms,
        "fsync_ms_median": figures.fsync_ms,
        "commit_ms": [1000 * s for s in figures.commit_s],
        "fsync_ms": [1000 * s for s in figures.fsync_s],
    }
