"""``--profile`` (bench/overhead.py): py-spy on the gateway under load, folded by component."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from overhead_load import ACCEPT_CONNS, cpu_ticks, run_wrk
from overhead_procs import LOAD_CPU, Processes
from overhead_targets import Target

# Where a sample's time goes: a background task anywhere in the stack names it, else the
# deepest frame that matches a rule (first rule wins).
BACKGROUND = (("learner (background task)", "Learner.run (middleware/learning/learner.py"),)
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("logging/",)),
    ("metrics", ("prometheus_client", "middleware/metrics.py")),
    ("store (sqlalchemy, sqlite)", ("feedback_store/", "sqlalchemy/", "sqlite3/")),
    ("scoring: features", ("middleware/scoring/features.py",)),
    ("scoring: model (river)", ("river/", "middleware/learning/")),
    ("scoring/policy", ("middleware/scoring/scorer.py", "middleware/scoring/policy.py")),
    ("ids, tokens (hmac, random)", ("middleware/scoring/tokens.py", "random.py", "hmac.py")),
    (
        "upstream client (aiohttp)",
        ("aiohttp/", "adapters/upstream/openai.py", "yarl/", "multidict/"),
    ),
    ("json", ("json/", "orjson")),
    ("gateway request code", ("middleware/", "adapters/")),
    ("starlette", ("starlette/",)),
    ("uvicorn, httptools", ("uvicorn/", "httptools")),
    ("thread hand-off (executor)", ("concurrent/", "threading.py", "queue.py")),
    ("asyncio", ("asyncio/",)),
)


def component(frames: Sequence[str]) -> str:
    for name, needle in BACKGROUND:
        if any(needle in frame for frame in frames):
            return name
    for frame in reversed(frames):
        for name, needles in COMPONENTS:
            if any(needle in frame for needle in needles):
                return name
    return "other"


@dataclass
class Profile:
    total: int
    own: Counter[str]
    inclusive: Counter[str]
    components: Counter[str]


def fold(lines: Sequence[str]) -> Profile:
    """Read py-spy's raw (folded) output: `frame;frame;... count` per line."""
    profile = Profile(0, Counter(), Counter(), Counter())
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        profile.total += count
        profile.own[frames[-1]] += count
        profile.components[component(frames)] += count
        for frame in set(frames):
            profile.inclusive[frame] += count
    return profile


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of a process (`tid name`), from /proc."""
    out: dict[str, float] = {}
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):
                ticks = cpu_ticks(task / "stat")
                name = (task / "comm").read_text().strip()
                out[f"{task.name} {name}"] = ticks / os.sysconf("SC_CLK_TCK")
    return out


def profile_gateway(
    procs: Processes, target: Target, seconds: int, workdir: Path, *, pin: bool
) -> None:
    """py-spy (GIL holder only) on the pinned gateway under wrk -c16: where its time goes.

    Sampling only the thread holding the GIL leaves out threads that wait (a commit's
    fsync on the store's writer thread), which would otherwise look like work; the CPU
    time of each thread, from /proc, is printed beside it. The samples are wall time: a
    thread preempted while it holds the GIL (say, right after waking the store's writer
    on the same core) is counted where it stopped.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("\n--profile needs py-spy: pip install py-spy (into this interpreter's venv)")
        return
    raw = workdir / "gateway.folded"
    spy_argv = [py_spy, "record", "--pid", str(target.pid), "--duration", str(seconds)]
    spy_argv += ["--rate", "250", "--function", "--gil", "--nonblocking"]
    spy_argv += ["--format", "raw", "--output", str(raw)]
    threads_before = thread_cpu(target.pid)
    spy = procs.start("py-spy", spy_argv, cpu=LOAD_CPU)
    time.sleep(1.0)
    # wrk outlasts the sampling window, so every sample is taken under load.
    sample = run_wrk(target, ACCEPT_CONNS, seconds + 2, 0, workdir, pin=pin)
    spy.wait(timeout=seconds + 60)
    threads_after = thread_cpu(target.pid)
    print(
        f"\nprofile of {target.name} at -c{ACCEPT_CONNS}: {sample.rps:,.0f} req/s, "
        f"{sample.cpu_us_per_req:.0f} us CPU per request, {100 * sample.cpu_share:.0f}% of "
        "its core while sampled"
    )
    wall = seconds + 3
    print("CPU by thread (share of one core):")
    for thread, after in sorted(threads_after.items()):
        used = after - threads_before.get(thread, 0.0)
        if used > 0.005 * wall:
            print(f"  {100 * used / wall:5.1f}%  {thread}")
    if not raw.exists():
        print(f"py-spy wrote nothing; its log:\n{procs.log_tail('py-spy')}")
        return
    profile = fold(raw.read_text().splitlines())
    total = max(profile.total, 1)
    kept = Path(tempfile.gettempdir()) / "hitl-gateway-profile.folded"
    shutil.copyfile(raw, kept)
    print(f"{profile.total} samples holding the GIL (folded stacks: {kept})")
    print("\nby component (the deepest frame that names one):")
    for name, count in profile.components.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\ntop functions by own time:")
    for frame, count in profile.own.most_common(25):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print("\nthe gateway's own functions by inclusive time:")
    ours = ("middleware/", "adapters/", "feedback_store/")
    mine = [(f, c) for f, c in profile.inclusive.most_common() if any(p in f for p in ours)]
    for frame, count in mine[:30]:
        print(f"  {100 * count / total:5.1f}%  {frame}")
