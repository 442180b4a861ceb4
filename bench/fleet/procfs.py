"""CPU accounting from /proc: the gateway's processes, which is which, their
connections, PostgreSQL's backends and the machine as a whole."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from overhead_load import cpu_ticks

#: clock ticks per second, the unit of /proc's CPU times
TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def session_ticks(session: int) -> dict[int, int]:
    """CPU ticks (user + system) of every live process in a session: a started server and
    all it started (workers, learner, multiprocessing's helpers)."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[3]) == session:
                ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    return ticks


def pid_ticks(pids: Sequence[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        with suppress(OSError):
            out[pid] = cpu_ticks(Path(f"/proc/{pid}/stat"))
    return out


def listening_inode(port: int) -> str | None:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}") and cols[3] == "0A":
            return cols[9]
    return None


def roles(session: int, pids: Sequence[int], port: int) -> dict[int, str]:
    """Which process is which: the ones holding the listening socket serve (the session
    leader only supervises when there are workers); a child without it is the learner,
    unless it is multiprocessing's resource tracker."""
    inode = listening_inode(port)
    out = {}
    for pid in pids:
        if pid == session:
            continue
        try:
            holds = any(
                os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()
            )
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if holds:
            out[pid] = "worker"
        else:
            out[pid] = "helper" if b"resource_tracker" in cmdline else "learner"
    out[session] = "supervisor" if "worker" in out.values() else "server"
    return out


def connections(session: int, port: int) -> dict[int, int]:
    """Established connections to ``port`` each process of the session holds."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}") and cols[3] == "01":
            inodes.add(f"socket:[{cols[9]}]")
    out = {}
    for pid in session_ticks(session):
        with suppress(OSError):
            fds = Path(f"/proc/{pid}/fd").iterdir()
            out[pid] = sum(1 for fd in fds if os.readlink(fd) in inodes)
    return out


def machine_ticks() -> tuple[int, int, int]:
    """(in processes, idle, total) ticks of all CPUs, from /proc/stat: user, nice and
    system time are what processes are charged; interrupts and steal are neither."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields)
    return (
        user + nice + system,
        idle + iowait,
        user + nice + system + idle + iowait + irq + softirq + steal,
    )
