"""What the benchmark measures (bench/overhead.py): the targets, started and checked.

Each target is a family (nginx direct, a bare passthrough, the gateway) in one mode
(JSON or SSE) fed one reply length. Before any load, one request per target checks the
answer is the fake upstream's, relayed intact; each gateway is then given votes so its
model scores.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overhead_procs import (
    LOAD_CPU,
    SERVER_CPU,
    BenchError,
    GatewayDown,
    Processes,
    free_port,
    http,
    wait_until_up,
)
from overhead_wire import (
    UPSTREAM_PATH,
    Payloads,
    request_body,
    upstream_base,
    upstream_path,
    write_nginx_files,
)

BENCH = Path(__file__).resolve().parent
PRIOR = 0.5  # [policy] prior in gateway_bench.toml
FAMILIES = ("direct", "aiohttp", "httpx-aio", "httpx", "gateway")
LABELS = {
    "direct": "(a)",
    "aiohttp": "(b)",
    "httpx-aio": "(b2)",
    "httpx": "(b3)",
    "gateway": "(c)",
}


@dataclass(frozen=True)
class Target:
    family: str
    mode: str
    #: the upstream reply's length in words
    words: int
    url: str
    #: the server process whose CPU time is counted (nginx's master for `direct`)
    pid: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.mode}-w{self.words}"


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


def gateway_env(
    base_url: str, store: Path, settings: Sequence[tuple[str, str]] = ()
) -> dict[str, str]:
    """The gateway's environment: nothing of ours but the benchmark's own values, and
    ``--set SECTION.KEY=VALUE`` as ``HITL_SECTION_KEY``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HITL_")}
    for name, value in settings:
        env["HITL_" + name.replace(".", "_").upper()] = value
    env["HITL_UPSTREAM_BASE_URL"] = base_url
    env["HITL_STORE_URL"] = f"sqlite:///{store}"
    env["HITL_BENCH_UPSTREAM_KEY"] = "bench-upstream-key"
    return env


def start_servers(
    procs: Processes,
    families: Sequence[str],
    modes: Sequence[str],
    workdir: Path,
    answers: Sequence[Payloads],
    settings: Sequence[tuple[str, str]] = (),
) -> list[Target]:
    """Start nginx and the servers under test; return the targets, each checked once.

    Every family gets a target per (mode, reply length); a passthrough serves all of
    them from one process (it relays by path), the gateway needs one process each.
    """
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    template = (BENCH / "nginx_upstream.conf").read_text()
    conf = write_nginx_files(template, prefix=workdir, port=port, answers=answers)
    by_words = {answer.words: answer for answer in answers}
    cells = [(mode, words) for words in by_words for mode in modes]
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
                Target("direct", mode, words, upstream + upstream_path(mode, words), nginx.pid)
                for mode, words in cells
            ]
        elif family in passthroughs:
            server_port = free_port()
            argv = [*passthroughs[family], "--upstream", upstream, "--port", str(server_port)]
            proc = procs.start(family, argv, cpu=SERVER_CPU)
            url = f"http://127.0.0.1:{server_port}"
            probe = url + upstream_path("json", cells[0][1])
            wait_until_up(procs, family, proc, probe, body=b"{}")
            targets += [
                Target(family, mode, words, url + upstream_path(mode, words), proc.pid)
                for mode, words in cells
            ]
        elif family == "gateway":
            targets += start_gateways(procs, cells, upstream, workdir, settings)
    for target in targets:
        answer = http(target.url, request_body(target.mode), timeout=10)
        check_answer(target, by_words[target.words], *answer)
    return targets


def start_gateways(
    procs: Processes,
    cells: Sequence[tuple[str, int]],
    upstream: str,
    workdir: Path,
    settings: Sequence[tuple[str, str]] = (),
) -> list[Target]:
    """One `hitl serve` per (mode, reply length), its upstream base_url nginx's location
    for that reply: /w50/v1, or /w50/sse/v1 for the streamed one."""
    hitl = shutil.which("hitl") or str(Path(sys.executable).with_name("hitl"))
    if not Path(hitl).exists():
        raise GatewayDown("no `hitl` command: install the project (pip install -e .) first")
    started = []
    # All start at once (they load the same modules on one core), then each is awaited.
    for mode, words in cells:
        name = f"gateway-{mode}-w{words}"
        port = free_port()
        base_url = upstream + upstream_base(mode, words)
        argv = [hitl, "serve", "--config", str(BENCH / "gateway_bench.toml")]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        env = gateway_env(base_url, workdir / f"{name}.db", settings)
        proc = procs.start(name, argv, cpu=SERVER_CPU, env=env, cwd=workdir)
        started.append((name, mode, words, proc, f"http://127.0.0.1:{port}"))
    targets = []
    for name, mode, words, proc, url in started:
        try:
            wait_until_up(procs, name, proc, url + "/healthz", timeout_s=90)
        except BenchError as exc:
            raise GatewayDown(str(exc)) from exc
        targets.append(Target("gateway", mode, words, url + UPSTREAM_PATH["json"], proc.pid))
    return targets
