"""Proxy overhead benchmark (issue 2).

Starts nginx as a fast fake OpenAI upstream, then measures with wrk, in one run and
interleaved (round r runs every target once), requests/s and p50/p99 latency at each
connection count for:

  (a)  direct      nginx itself
  (b)  aiohttp     bare Starlette passthrough, one aiohttp.ClientSession (the floor)
  (b2) httpx-aio   the same over httpx.AsyncClient + httpx_aiohttp.AiohttpTransport
  (b3) httpx       the same over plain httpx
  (c)  gateway     hitl serve --config bench/gateway_bench.toml: recording on, and scoring
                   with a model trained on --labels votes first (untrained, it skips
                   prediction)

each for a JSON reply and a streamed (SSE) reply. Servers under test run on CPU 0
(taskset), nginx and wrk on CPU 1, every Python server on uvicorn with uvloop and
httptools.

Acceptance (issue 2): wrk -t1 -c16, three interleaved 8-second runs: the gateway (JSON)
reaches >= 0.25 x the requests/s of the bare aiohttp passthrough (medians of the runs),
with no non-2xx answer and no socket error. Exit status: 0 met, 1 not met, 2 not
evaluated (the gateway could not be measured).

    python bench/overhead.py                      # the acceptance run (about 13 min)
    python bench/overhead.py --quick              # 2-second single runs, a smoke test
    python bench/overhead.py --targets aiohttp,gateway --modes json --connections 16
    python bench/overhead.py --profile 10         # then py-spy on the gateway at -c16

Needs nginx, wrk and taskset: ``apt-get install -y nginx wrk util-linux``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
SERVER_CPU = "0"
LOAD_CPU = "1"
ACCEPT_CONNS = 16
ACCEPT_RATIO = 0.25
PRIOR = 0.5  # [policy] prior in gateway_bench.toml
FAMILIES = ("direct", "aiohttp", "httpx-aio", "httpx", "gateway")
LABELS = {
    "direct": "(a)",
    "aiohttp": "(b)",
    "httpx-aio": "(b2)",
    "httpx": "(b3)",
    "gateway": "(c)",
}
MODES = ("json", "sse")
UPSTREAM_PATH = {"json": "/v1/chat/completions", "sse": "/sse/v1/chat/completions"}

REPLY = (
    'Set [upstream] kind = "openai" and base_url to your server\'s /v1 URL in config.toml, '
    "name the environment variable that holds the key in api_key_env, and restart hitl "
    "serve. Every reply then carries a hitl object with its reply id, feedback token, "
    "confidence and decision."
)
WORDS_PER_CHUNK = 12


def reply_text(words: int) -> str:
    """The fixed reply, or its words repeated to `words` words (scoring cost grows with it)."""
    if words <= 0:
        return REPLY
    base = REPLY.split()
    return " ".join(base[i % len(base)] for i in range(words))


@dataclass(frozen=True)
class Payloads:
    """What the fake upstream answers: one completion, and the same text streamed."""

    completion: dict[str, Any]
    chunks: list[dict[str, Any]]
    words: int

    def completion_body(self) -> bytes:
        return _dumps(self.completion).encode()

    def sse_body(self) -> bytes:
        events = [f"data: {_dumps(chunk)}\n\n" for chunk in self.chunks]
        return ("".join(events) + "data: [DONE]\n\n").encode()


def payloads(text: str) -> Payloads:
    completion = {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 21, "completion_tokens": 52, "total_tokens": 73},
    }
    words = text.split(" ")
    pieces = [
        " ".join(words[i : i + WORDS_PER_CHUNK]) + " "
        for i in range(0, len(words), WORDS_PER_CHUNK)
    ]
    chunks = [_chunk({"role": "assistant", "content": ""})]
    chunks += [_chunk({"content": piece}) for piece in pieces]
    chunks.append(_chunk({}, "stop"))
    return Payloads(completion, chunks, len(words))


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench0002",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


REQUEST: dict[str, Any] = {
    "model": "bench-model",
    "messages": [
        {"role": "system", "content": "You answer questions about hitl-gateway."},
        {"role": "user", "content": "How do I point the gateway at my own model server?"},
    ],
    "temperature": 0.2,
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def request_body(mode: str) -> bytes:
    return _dumps({**REQUEST, "stream": True} if mode == "sse" else REQUEST).encode()


# --- configuration files -------------------------------------------------------------


def write_nginx_files(template: str, *, prefix: Path, port: int, answers: Payloads) -> Path:
    """Write the answers and a config serving them under `prefix`; return the config."""
    # nginx's worker runs as an unprivileged user: it must be able to reach the files.
    www = prefix / "www"
    www.mkdir(exist_ok=True)
    prefix.chmod(0o711)
    www.chmod(0o755)
    completion, sse = www / "completion.json", www / "stream.sse"
    completion.write_bytes(answers.completion_body())
    sse.write_bytes(answers.sse_body())
    for path in (completion, sse):
        path.chmod(0o644)
    conf = prefix / "nginx.conf"
    conf.write_text(
        template.replace("@PREFIX@", str(prefix))
        .replace("@PORT@", str(port))
        .replace("@COMPLETION_FILE@", str(completion))
        .replace("@SSE_FILE@", str(sse))
    )
    return conf


def wrk_script(body: bytes, report: Path) -> str:
    # done() runs once after the run: write the figures wrk keeps (latency in us) as JSON.
    return f"""wrk.method = "POST"
wrk.body = [==[{body.decode()}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-client-key"

function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open("{report}", "w")
  f:write(string.format(
    '{{"requests":%d,"duration_us":%d,"status":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%.1f,"p99_us":%.1f,"max_us":%.1f}}',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
  f:close()
end
"""


# --- processes -----------------------------------------------------------------------


class BenchError(Exception):
    """The benchmark cannot go on: a tool is missing or a server did not come up."""


class GatewayDown(BenchError):
    """`hitl serve` did not come up; the other targets can still be measured."""


class Processes:
    """Every server the benchmark starts; ``stop_all`` ends them, whatever happened.

    Each child gets its own session so a terminal Ctrl-C reaches only this script,
    which then stops the children in order, by process group id.
    """

    def __init__(self, logdir: Path, *, pin: bool) -> None:
        self.logdir = logdir
        self.pin = pin
        self._running: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("wb")
        command = ["taskset", "-c", cpu, *argv] if self.pin else list(argv)
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._running.append((name, proc, log))
        return proc

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self._running):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc, log in reversed(self._running):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
            log.close()
        self._running.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def wait_until_up(
    procs: Processes,
    name: str,
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    body: bytes | None = None,
    timeout_s: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with status {proc.returncode} before serving; "
                f"its log ({procs.logdir / (name + '.log')}):\n{procs.log_tail(name)}"
            )
        try:
            status, _, _ = http(url, body, timeout=2.0)
            # Up, even if the answer is wrong: check_answer says what is wrong with it.
            if status not in (502, 503, 504):
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{name} did not answer 200 at {url} within {timeout_s:g} s ({last}); "
        f"its log:\n{procs.log_tail(name)}"
    )


# --- targets and checks --------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    family: str
    mode: str
    url: str
    #: the server process whose CPU time is counted (nginx's master for `direct`)
    pid: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.mode}"


def _sse_events(payload: bytes) -> list[str]:
    return [
        line[len("data: ") :] for line in payload.decode().split("\n") if line.startswith("data: ")
    ]


def check_answer(
    target: Target, answers: Payloads, status: int, headers: dict[str, str], payload: bytes
) -> None:
    """One request before the load: the answer is the fake upstream's, relayed intact."""
    problem = ""
    if status != 200:
        problem = f"HTTP {status}"
    elif target.mode == "json":
        reply = json.loads(payload)
        hitl = reply.pop("hitl", None)
        if reply != answers.completion:
            problem = "the reply is not the upstream's completion"
        elif target.family == "gateway" and not (
            isinstance(hitl, dict) and "reply_id" in hitl and "x-hitl-reply-id" in _lower(headers)
        ):
            problem = "the reply has no hitl object or no X-HITL-Reply-Id header"
    else:
        events = _sse_events(payload)
        if not events or events[-1] != "[DONE]":
            problem = "the stream does not end with data: [DONE]"
        else:
            chunks = [json.loads(event) for event in events[:-1]]
            extra = [chunk for chunk in chunks if "hitl" in chunk]
            if [chunk for chunk in chunks if "hitl" not in chunk] != answers.chunks:
                problem = "the stream's chunks are not the upstream's"
            elif target.family == "gateway" and len(extra) != 1:
                problem = "the stream has no hitl chunk before [DONE]"
            elif target.family != "gateway" and extra:
                problem = "a passthrough added a chunk"
    if problem:
        raise BenchError(f"{target.name} at {target.url}: {problem}; answer: {payload[:400]!r}")


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _hitl(target: Target, payload: bytes) -> dict[str, Any]:
    if target.mode == "json":
        hitl: dict[str, Any] = json.loads(payload)["hitl"]
        return hitl
    chunks = [json.loads(event) for event in _sse_events(payload) if event != "[DONE]"]
    return next(chunk["hitl"] for chunk in chunks if "hitl" in chunk)


def seed_labels(target: Target, labels: int, timeout_s: float = 30.0) -> float:
    """Vote on `labels` replies so the gateway's model is trained and predicts on every
    request (with no label it answers the prior without running the model). Returns the
    confidence the trained model gives the benchmark's reply."""
    base = target.url.removesuffix("/v1/chat/completions")
    body = request_body(target.mode)
    for i in range(labels):
        status, _, payload = http(target.url, body, timeout=10)
        hitl = _hitl(target, payload)
        vote = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"]}
        vote["rating"] = "up" if i % 3 else "down"
        status, _, answer = http(base + "/v1/feedback", json.dumps(vote).encode(), timeout=10)
        if status not in (200, 201):
            raise BenchError(f"{target.name}: a vote got HTTP {status}: {answer[:300]!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        confidence = float(_hitl(target, http(target.url, body, timeout=10)[2])["confidence"])
        # Untrained, every reply gets the prior; trained, the model's score.
        if confidence != PRIOR:
            return confidence
        if time.monotonic() > deadline:
            raise BenchError(
                f"{target.name}: confidence still the prior {PRIOR} after {labels} votes; "
                "the learner did not pick them up"
            )
        time.sleep(0.5)


# --- load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    target: str
    family: str
    mode: str
    conns: int
    run: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    #: the server's CPU time (all threads, and child processes) per answered request
    cpu_us_per_req: float
    #: its CPU time over the run's wall time: under 1.0, it was not using all of its core
    cpu_share: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its direct children, from /proc."""
    total = 0
    pids = [pid]
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    for each in pids:
        with suppress(OSError):
            # Fields after the parenthesised command name; utime and stime are 14 and 15.
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(
    target: Target, conns: int, duration: int, run: int, workdir: Path, *, pin: bool
) -> Sample:
    report = workdir / f"wrk-{target.name}-c{conns}-r{run}.json"
    script = report.with_suffix(".lua")
    script.write_text(wrk_script(request_body(target.mode), report))
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s"]
    argv += ["-s", str(script), target.url]
    command = ["taskset", "-c", LOAD_CPU, *argv] if pin else argv
    cpu_before, wall_before = cpu_seconds(target.pid), time.monotonic()
    done = subprocess.run(command, capture_output=True, timeout=duration + 30, check=False)
    cpu = cpu_seconds(target.pid) - cpu_before
    wall = time.monotonic() - wall_before
    if done.returncode != 0 or not report.exists():
        raise BenchError(
            f"wrk failed on {target.name} (status {done.returncode}): "
            f"{done.stderr.decode(errors='replace')[-400:]}"
        )
    figures = json.loads(report.read_text())
    seconds = figures["duration_us"] / 1e6
    return Sample(
        target=target.name,
        family=target.family,
        mode=target.mode,
        conns=conns,
        run=run,
        requests=figures["requests"],
        rps=figures["requests"] / seconds if seconds else 0.0,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        # wrk counts answers with status > 399; a check before the load saw a 200.
        non_2xx=figures["status"],
        socket_errors=figures["connect"] + figures["read"] + figures["write"] + figures["timeout"],
        cpu_us_per_req=1e6 * cpu / figures["requests"] if figures["requests"] else 0.0,
        cpu_share=cpu / wall if wall else 0.0,
    )


@dataclass(frozen=True)
class Summary:
    target: str
    family: str
    mode: str
    conns: int
    runs: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_us_per_req: float
    cpu_share: float


def summarise(samples: Sequence[Sample]) -> list[Summary]:
    groups: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[(sample.target, sample.conns)].append(sample)
    out = []
    for (target, conns), group in groups.items():
        out.append(
            Summary(
                target=target,
                family=group[0].family,
                mode=group[0].mode,
                conns=conns,
                runs=len(group),
                rps=statistics.median(s.rps for s in group),
                rps_min=min(s.rps for s in group),
                rps_max=max(s.rps for s in group),
                p50_ms=statistics.median(s.p50_ms for s in group),
                p99_ms=statistics.median(s.p99_ms for s in group),
                non_2xx=sum(s.non_2xx for s in group),
                socket_errors=sum(s.socket_errors for s in group),
                cpu_us_per_req=statistics.median(s.cpu_us_per_req for s in group),
                cpu_share=statistics.median(s.cpu_share for s in group),
            )
        )
    return out


def ratios(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """Each target's median req/s over the aiohttp floor's, per mode and connections."""
    by_key = {(s.family, s.mode, s.conns): s for s in summaries}
    rows = []
    for s in summaries:
        floor = by_key.get(("aiohttp", s.mode, s.conns))
        if floor is None or s.family in ("aiohttp", "direct") or not floor.rps:
            continue
        rows.append(
            {
                "target": s.target,
                "family": s.family,
                "conns": s.conns,
                "ratio_to_aiohttp": s.rps / floor.rps,
                # The same ratio from CPU time per request: what a core to itself would give.
                "cpu_ratio_to_aiohttp": (
                    floor.cpu_us_per_req / s.cpu_us_per_req if s.cpu_us_per_req else 0.0
                ),
            }
        )
    return rows


@dataclass(frozen=True)
class Verdict:
    evaluated: bool
    passed: bool
    text: str


def acceptance(summaries: Sequence[Summary], *, duration: int, runs: int) -> Verdict:
    by_key = {(s.family, s.mode, s.conns): s for s in summaries}
    gateway = by_key.get(("gateway", "json", ACCEPT_CONNS))
    floor = by_key.get(("aiohttp", "json", ACCEPT_CONNS))
    if gateway is None or floor is None or not floor.rps:
        return Verdict(False, False, "not evaluated: needs gateway and aiohttp, json, -c16")
    ratio = gateway.rps / floor.rps
    clean = gateway.non_2xx == 0 and gateway.socket_errors == 0
    passed = ratio >= ACCEPT_RATIO and clean
    text = (
        f"gateway-json {gateway.rps:,.0f} req/s / aiohttp-json {floor.rps:,.0f} req/s "
        f"= {ratio:.3f} at -c{ACCEPT_CONNS} (needs >= {ACCEPT_RATIO}); "
        f"non-2xx {gateway.non_2xx}, socket errors {gateway.socket_errors}: "
        f"{'MET' if passed else 'NOT MET'}"
    )
    if (duration, runs) != (8, 3):
        text += (
            f" (indicative: acceptance is --duration 8 --runs 3, this was {duration} s x {runs})"
        )
    return Verdict(True, passed, text)


# --- output --------------------------------------------------------------------------


def print_table(summaries: Sequence[Summary]) -> None:
    order = {family: i for i, family in enumerate(FAMILIES)}
    rows = sorted(summaries, key=lambda s: (s.mode, s.conns, order[s.family]))
    header = (
        f"{'target':<20} {'conns':>5} {'req/s':>9} {'min-max':>15} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8} "
        f"{'cpu us/req':>10} {'cpu':>5}"
    )
    print(header)
    print("-" * len(header))
    previous: tuple[str, int] | None = None
    for s in rows:
        if previous is not None and previous != (s.mode, s.conns):
            print()
        previous = (s.mode, s.conns)
        label = f"{LABELS[s.family]} {s.target}"
        flag = "  <-- errors" if s.non_2xx or s.socket_errors else ""
        print(
            f"{label:<20} {s.conns:>5} {s.rps:>9,.0f} {s.rps_min:>7,.0f}-{s.rps_max:<7,.0f} "
            f"{s.p50_ms:>8.2f} {s.p99_ms:>8.2f} {s.non_2xx:>8} {s.socket_errors:>8} "
            f"{s.cpu_us_per_req:>10.0f} {100 * s.cpu_share:>4.0f}%{flag}"
        )


def print_ratios(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    print(
        "\nover the bare aiohttp passthrough (b), same mode and connections: req/s ratio, and"
        "\nthe ratio of CPU time per request ((b)'s over the target's; less noisy when other"
        "\nwork shares the core):"
    )
    order = {family: i for i, family in enumerate(FAMILIES)}
    for row in sorted(rows, key=lambda r: (-order[r["family"]], r["target"], r["conns"])):
        label = f"{LABELS[row['family']]}/(b) {row['target']}"
        print(
            f"  {label:<26} -c{row['conns']:<3} req/s {row['ratio_to_aiohttp']:6.3f}"
            f"   cpu/req {row['cpu_ratio_to_aiohttp']:6.3f}"
        )


# --- profile -------------------------------------------------------------------------


# Where a sample's time goes: a background task anywhere in the stack names it, else the
# deepest frame that matches a rule (first rule wins).
BACKGROUND = (("learner (background task)", "Learner.run (middleware/learner.py"),)
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("logging/",)),
    ("metrics", ("prometheus_client", "middleware/metrics.py")),
    ("store (sqlalchemy, sqlite)", ("feedback_store/", "sqlalchemy/", "sqlite3/")),
    ("scoring: features", ("middleware/features.py",)),
    ("scoring: model (river)", ("river/", "middleware/model.py")),
    ("scoring/policy", ("middleware/scoring.py", "middleware/policy.py")),
    ("ids, tokens (hmac, random)", ("middleware/tokens.py", "random.py", "hmac.py")),
    ("upstream client (aiohttp)", ("aiohttp/", "adapters/openai.py", "yarl/", "multidict/")),
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
                fields = (task / "stat").read_text().rpartition(")")[2].split()
                name = (task / "comm").read_text().strip()
                out[f"{task.name} {name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                    "SC_CLK_TCK"
                )
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


# --- main ----------------------------------------------------------------------------


def missing_tools() -> list[str]:
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]


def can_pin() -> bool:
    return {0, 1} <= os.sched_getaffinity(0)


def gateway_env(base_url: str, store: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HITL_")}
    env["HITL_UPSTREAM_BASE_URL"] = base_url
    env["HITL_STORE_URL"] = f"sqlite:///{store}"
    env["HITL_BENCH_UPSTREAM_KEY"] = "bench-upstream-key"
    return env


def start_servers(
    procs: Processes,
    families: Sequence[str],
    modes: Sequence[str],
    workdir: Path,
    answers: Payloads,
) -> list[Target]:
    """Start nginx and the servers under test; return the targets, each checked once."""
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    template = (BENCH / "nginx_upstream.conf").read_text()
    conf = write_nginx_files(template, prefix=workdir, port=port, answers=answers)
    nginx = procs.start("nginx", ["nginx", "-p", str(workdir), "-c", str(conf)], cpu=LOAD_CPU)
    wait_until_up(procs, "nginx", nginx, upstream + "/v1/models", timeout_s=10)

    targets: list[Target] = []
    python = sys.executable
    passthroughs = {
        "aiohttp": [python, str(BENCH / "passthrough_aiohttp.py")],
        "httpx-aio": [python, str(BENCH / "passthrough_httpx.py"), "--transport", "aiohttp"],
        "httpx": [python, str(BENCH / "passthrough_httpx.py"), "--transport", "httpx"],
    }
    for family in families:
        if family == "direct":
            targets += [
                Target("direct", mode, upstream + UPSTREAM_PATH[mode], nginx.pid) for mode in modes
            ]
        elif family in passthroughs:
            server_port = free_port()
            argv = [*passthroughs[family], "--upstream", upstream, "--port", str(server_port)]
            proc = procs.start(family, argv, cpu=SERVER_CPU)
            url = f"http://127.0.0.1:{server_port}"
            wait_until_up(procs, family, proc, url + UPSTREAM_PATH["json"], body=b"{}")
            targets += [Target(family, mode, url + UPSTREAM_PATH[mode], proc.pid) for mode in modes]
        elif family == "gateway":
            targets += start_gateways(procs, modes, upstream, workdir)
    for target in targets:
        check_answer(target, answers, *http(target.url, request_body(target.mode), timeout=10))
    return targets


def start_gateways(
    procs: Processes, modes: Sequence[str], upstream: str, workdir: Path
) -> list[Target]:
    """One `hitl serve` per mode: the SSE one's upstream base_url is nginx's /sse/v1."""
    hitl = shutil.which("hitl") or str(Path(sys.executable).with_name("hitl"))
    if not Path(hitl).exists():
        raise GatewayDown("no `hitl` command: install the project (pip install -e .) first")
    targets = []
    for mode in modes:
        name = f"gateway-{mode}"
        port = free_port()
        base_url = upstream + UPSTREAM_PATH[mode].removesuffix("/chat/completions")
        argv = [hitl, "serve", "--config", str(BENCH / "gateway_bench.toml")]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        env = gateway_env(base_url, workdir / f"{name}.db")
        proc = procs.start(name, argv, cpu=SERVER_CPU, env=env, cwd=workdir)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(procs, name, proc, url + "/healthz", timeout_s=90)
        except BenchError as exc:
            raise GatewayDown(str(exc)) from exc
        targets.append(Target("gateway", mode, url + "/v1/chat/completions", proc.pid))
    return targets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Proxy overhead benchmark: nginx, bare passthroughs and the gateway.",
        epilog=f"Acceptance: -c{ACCEPT_CONNS}, --duration 8 --runs 3, gateway-json >= "
        f"{ACCEPT_RATIO} x aiohttp-json req/s, no non-2xx.",
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 8)")
    parser.add_argument("--runs", type=int, help="interleaved runs per target (default 3)")
    parser.add_argument("--connections", default="1,16,64", help="comma list (default 1,16,64)")
    parser.add_argument("--targets", default=",".join(FAMILIES), help="comma list of families")
    parser.add_argument("--modes", default=",".join(MODES), help="json, sse or both")
    parser.add_argument("--quick", action="store_true", help="2-second single runs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="SECONDS",
        default=0,
        help="after the runs, py-spy the JSON gateway for SECONDS under wrk -c16",
    )
    parser.add_argument(
        "--labels",
        type=int,
        default=20,
        help="votes given to each gateway before the load, so its model is trained and "
        "predicts on every request (default 20; 0 measures an untrained model, which "
        "skips prediction)",
    )
    parser.add_argument(
        "--reply-words",
        type=int,
        default=0,
        help="make the upstream's reply N words long (default: a fixed 44-word reply); "
        "the gateway's scoring cost grows with the reply",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, dbs)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 8)
    args.runs = args.runs or (1 if args.quick else 3)
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.targets = [t for t in args.targets.split(",") if t]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.targets) - set(FAMILIES) | set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown target or mode {sorted(unknown)}; targets {FAMILIES}, modes {MODES}")
    if args.duration < 1 or args.runs < 1 or not args.connections or min(args.connections) < 1:
        parser.error("--duration, --runs and --connections must be positive")
    if args.labels < 0:
        parser.error("--labels must be 0 or more")
    return args


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` that stops the servers runs."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure(args: argparse.Namespace, procs: Processes, workdir: Path, *, pin: bool) -> Verdict:
    answers = payloads(reply_text(args.reply_words))
    try:
        targets = start_servers(procs, args.targets, args.modes, workdir, answers)
    except GatewayDown as exc:
        print(f"warning: {exc}\n-> measuring without the gateway", file=sys.stderr)
        procs.stop_all()
        others = [t for t in args.targets if t != "gateway"]
        targets = start_servers(procs, others, args.modes, workdir, answers)
    for target in targets:
        if target.family == "gateway" and args.labels:
            confidence = seed_labels(target, args.labels)
            print(
                f"{target.name}: {args.labels} votes learned, the model now scores the "
                f"benchmark reply {confidence:.3f}",
                file=sys.stderr,
            )
    load_before = os.getloadavg()[0]
    print(
        f"{len(targets)} targets, -c {args.connections}, {args.runs} x {args.duration} s "
        f"each, servers on CPU {SERVER_CPU}, nginx+wrk on CPU {LOAD_CPU}"
        f"{'' if pin else ' (unpinned)'}; a {answers.words}-word reply, {len(answers.chunks)} "
        f"chunks when streamed; load average {load_before:.2f}",
        file=sys.stderr,
    )
    for target in targets:  # warm-up, not recorded
        run_wrk(target, ACCEPT_CONNS, 1, 0, workdir, pin=pin)
    samples: list[Sample] = []
    for run in range(1, args.runs + 1):
        for conns in args.connections:
            for target in targets:
                sample = run_wrk(target, conns, args.duration, run, workdir, pin=pin)
                samples.append(sample)
                print(
                    f"  run {run} -c{conns:<3} {target.name:<16} {sample.rps:>9,.0f} req/s"
                    f"  p99 {sample.p99_ms:7.2f} ms",
                    file=sys.stderr,
                )
    load_after = os.getloadavg()[0]
    summaries = summarise(samples)
    verdict = acceptance(summaries, duration=args.duration, runs=args.runs)
    print()
    print_table(summaries)
    print_ratios(ratios(summaries))
    print(f"\nacceptance: {verdict.text}")
    print(
        f"load average before/after: {load_before:.2f}/{load_after:.2f} "
        "(other work on these two cores lowers every figure)"
    )
    errors = sorted({s.target for s in summaries if s.non_2xx or s.socket_errors})
    if errors:
        print(f"ERRORS (non-2xx answers or socket errors): {', '.join(errors)}")
    if args.json:
        figures = {
            "samples": [asdict(s) for s in samples],
            "summaries": [asdict(s) for s in summaries],
            "ratios": ratios(summaries),
            "acceptance": asdict(verdict),
            "load_average": [load_before, load_after],
        }
        print(json.dumps(figures, indent=1))
    gateway = next((t for t in targets if t.name == "gateway-json"), None)
    if args.profile and gateway is not None:
        profile_gateway(procs, gateway, args.profile, workdir, pin=pin)
    return verdict


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(
            f"missing {', '.join(missing)}: install with `apt-get install -y nginx wrk "
            "util-linux` (Debian/Ubuntu), then run again",
            file=sys.stderr,
        )
        return 2
    pin = can_pin()
    if not pin:
        print("warning: CPUs 0 and 1 are not both available; running unpinned", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="hitl-bench-"))
    procs = Processes(workdir, pin=pin)
    try:
        with interrupts_as_keyboard():
            verdict = measure(args, procs, workdir, pin=pin)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not verdict.evaluated:
        return 2 if "gateway" in args.targets else 0
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
