"""The benchmark's own child processes, and how they are started.

``python bench/fleet_load.py --upstream PORT`` serves the fixed ``chat.completion``;
``python bench/fleet_load.py --load URL`` is the load generator: concurrent clients
sending chats and votes, printing ``start`` when they begin and their figures as JSON
at the end. Both are hidden options of the same command line (``fleet.cli``).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overhead_wire import payloads, reply_text

if TYPE_CHECKING:
    import aiohttp

#: the script the children run: the benchmark's entry point, beside this package
ENTRY = Path(__file__).resolve().parent.parent / "fleet_load.py"
QUESTIONS = (
    "How do I point the gateway at my own model?",
    "Why was my reply held for review, and for how long?",
    "What does the feedback token protect against?",
    "Can two workers share one SQLite file?",
    "How often does the learner publish a snapshot?",
    "Where do thumbs-down comments go?",
    "How do I export the labels for offline training?",
    "What happens to votes while the database is down?",
)


def child_argv(*args: str) -> list[str]:
    """The command line of one of the benchmark's own children."""
    return [sys.executable, str(ENTRY), *args]


# --- the upstream (a child process: --upstream PORT) ---------------------------------


def serve_upstream(port: int, words: int) -> None:
    import uvloop
    from aiohttp import web

    body = payloads(reply_text(words)).completion_body()

    async def completion(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completion)
    loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


# --- the load (a child process: --load URL) -------------------------------------------


@dataclass
class Tally:
    """What the clients saw, by kind of request (chat, vote)."""

    ok: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "chat 503": n, non-2xx only
    transport: Counter[str] = field(default_factory=Counter)  # "chat TimeoutError": n
    decisions: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, str] = field(default_factory=dict)  # one answer per non-2xx status
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"chat": [], "vote": []})


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def client(
    number: int,
    base: str,
    session: aiohttp.ClientSession,
    tally: Tally,
    stop_at: float,
    every: int,
    seed: int,
) -> None:
    import aiohttp

    rng = random.Random(seed * 1000 + number)
    replies: list[tuple[str, str]] = []
    sent = 0
    while time.monotonic() < stop_at:
        vote = sent % (every + 1) == every and bool(replies)
        sent += 1
        if vote:
            reply_id, token = replies.pop()
            kind, path = "vote", "/v1/feedback"
            down = rng.random() < 1 / 3
            payload: dict[str, Any] = {"reply_id": reply_id, "token": token}
            payload.update({"rating": "down", "reason": "incorrect"} if down else {"rating": "up"})
        else:
            kind, path = "chat", "/v1/chat/completions"
            question = f"{rng.choice(QUESTIONS)} (client {number}, request {sent})"
            payload = {
                "model": "bench-model",
                "messages": [{"role": "user", "content": question}],
                "user": f"bench-{number}",
            }
        started = time.perf_counter()
        try:
            async with session.post(base + path, json=payload) as response:
                status, answer = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.transport[f"{kind} {type(exc).__name__}"] += 1
            continue
        tally.latencies[kind].append(1000 * (time.perf_counter() - started))
        if not 200 <= status < 300:
            key = f"{kind} {status}"
            tally.statuses[key] += 1
            tally.bodies.setdefault(key, answer[:300].decode(errors="replace"))
            continue
        tally.ok[kind] += 1
        if kind == "chat":
            try:
                hitl = json.loads(answer).get("hitl") or {}
            except (ValueError, AttributeError):
                hitl = {"decision": "answer not a JSON object"}
            tally.decisions[hitl.get("decision", "no hitl object")] += 1
            if "reply_id" in hitl:
                replies.append((hitl["reply_id"], hitl["feedback_token"]))


async def load(base: str, clients: int, duration: float, every: int, seed: int) -> dict[str, Any]:
    import aiohttp

    tally = Tally()
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # The parent takes its "before" readings on this line.
        print("start", flush=True)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        await asyncio.gather(
            *(
                client(n, base, session, tally, started + duration, every, seed)
                for n in range(clients)
            )
        )
        elapsed = time.monotonic() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    everything = tally.latencies["chat"] + tally.latencies["vote"]
    return {
        "elapsed_s": elapsed,
        "answered": len(everything),
        "ok": dict(tally.ok),
        "statuses": dict(tally.statuses),
        "transport": dict(tally.transport),
        "decisions": dict(tally.decisions),
        "bodies": tally.bodies,
        "p50_ms": percentile(everything, 0.50),
        "p99_ms": percentile(everything, 0.99),
        "max_ms": max(everything, default=0.0),
        "chat_p99_ms": percentile(tally.latencies["chat"], 0.99),
        "vote_p99_ms": percentile(tally.latencies["vote"], 0.99),
        "cpu_s": used.ru_utime + used.ru_stime - usage.ru_utime - usage.ru_stime,
    }


def load_main(base: str, clients: int, duration: float, every: int, seed: int) -> None:
    import uvloop

    print(json.dumps(uvloop.run(load(base, clients, duration, every, seed))))
