"""What the benchmark's fake upstream answers and what wrk sends (bench/overhead.py).

The completion and its SSE stream that nginx serves for each reply length, the chat
request wrk posts, and the two files written for them: nginx's config and wrk's Lua
script.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODES = ("json", "sse")
UPSTREAM_PATH = {"json": "/v1/chat/completions", "sse": "/sse/v1/chat/completions"}


def upstream_path(mode: str, words: int) -> str:
    """Where nginx serves the `words`-word reply in `mode`: /w50/v1/..., /w50/sse/v1/..."""
    return f"/w{words}{UPSTREAM_PATH[mode]}"


def upstream_base(mode: str, words: int) -> str:
    """The `[upstream] base_url` path of a gateway fed that reply (ends in /v1)."""
    return upstream_path(mode, words).removesuffix("/chat/completions")


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


def write_nginx_files(
    template: str, *, prefix: Path, port: int, answers: Sequence[Payloads]
) -> Path:
    """Write each length's answers and a config serving them under `prefix`; return it."""
    # nginx's worker runs as an unprivileged user: it must be able to reach the files.
    www = prefix / "www"
    www.mkdir(exist_ok=True)
    prefix.chmod(0o711)
    www.chmod(0o755)
    locations = []
    for answer in answers:
        folder = www / f"w{answer.words}"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
        files = {"json": folder / "completion.json", "sse": folder / "stream.sse"}
        files["json"].write_bytes(answer.completion_body())
        files["sse"].write_bytes(answer.sse_body())
        for mode, path in files.items():
            path.chmod(0o644)
            locations.append(_location(upstream_path(mode, answer.words), mode, path))
    conf = prefix / "nginx.conf"
    conf.write_text(
        template.replace("@PREFIX@", str(prefix))
        .replace("@PORT@", str(port))
        .replace("@REPLY_LOCATIONS@", "\n".join(locations).strip())
    )
    return conf


def _location(path: str, mode: str, file: Path) -> str:
    # The static module refuses POST with 405; `error_page 405 =200 $uri` serves the
    # file anyway (the request body is read and discarded). Files, not `return 200
    # '...'`, because nginx caps a config string at 4 KiB and replies are longer.
    media = "application/json" if mode == "json" else "text/event-stream"
    return f"""        location = {path} {{
            default_type {media};
            alias {file};
            error_page 405 =200 $uri;
        }}"""


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
