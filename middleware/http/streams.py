"""Server-sent events the gateway writes itself: the ``hitl`` chunk, heartbeats, and a
released hold replayed as an ordinary stream."""

from __future__ import annotations

import time
from typing import Any

import orjson

from middleware.flows.hold import Release

DONE = b"data: [DONE]\n\n"
#: an SSE comment: keeps proxies and clients from timing out while a hold waits
HEARTBEAT = b": waiting for a reviewer\n\n"


def event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def chunk(chunk_id: str, created: int, model: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        **fields,
    }


def released_events(release: Release, *, chunk_id: str, model: str) -> list[bytes]:
    """A correction or the fallback as a stream of one choice: role and text, then stop."""
    created = int(time.time())
    delta = {"role": "assistant", "content": release.text}
    return [
        event(
            chunk(
                chunk_id,
                created,
                model,
                choices=[{"index": 0, "delta": delta, "finish_reason": None}],
            )
        ),
        event(
            chunk(
                chunk_id,
                created,
                model,
                choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
            )
        ),
    ]
