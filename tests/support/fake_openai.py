"""A real OpenAI-compatible server for tests, scripted by the request's ``model`` name.

- ``json`` (default): a normal chat.completion whose content is ``reply: <last user text>``
- ``stream`` requests (``"stream": true``): the same text in SSE chunks, usage when asked
- ``fail-500``: HTTP 500; ``fail-400``: HTTP 400 in the OpenAI error shape
- ``slow``: sleeps ``slow_s`` before answering; ``cut``: a stream that breaks midway;
  ``trickle``: a stream that sends one word every 0.3 s; ``deep``: a reply nested 300
  levels; ``nul``: a reply holding a NUL character; ``empty-stream``: only ``[DONE]``
- ``tools``: a tool call reply (streamed as tool-call deltas too); ``garbage``: a 200
  that is not JSON
- ``reply:<text>``: answers exactly <text>
- ``odd`` (streamed): comments, a non-JSON data line and malformed chunks among good ones
- ``no-stream``: a streaming request answered with a plain chat.completion (JSON)

Every request is kept in ``app.state.requests`` (headers, raw headers, body, method,
path and query) for assertions.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _last_user(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def _keep(request: Request, body: bytes) -> None:
    request.app.state.requests.append(
        {
            "headers": dict(request.headers),
            "raw_headers": [(k.decode(), v.decode()) for k, v in request.scope["headers"]],
            "body": body,
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
        }
    )


def make_app(*, slow_s: float = 3.0) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await request.body()
        _keep(request, body)
        payload = json.loads(body)
        model = str(payload.get("model", "json"))
        if model == "fail-500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if model == "fail-400":
            return JSONResponse(
                {"error": {"message": "bad model", "type": "invalid_request_error", "code": "x"}},
                status_code=400,
            )
        if model == "slow":
            await asyncio.sleep(slow_s)
        if model == "garbage":
            return Response(b"<html>not json</html>", media_type="text/html")
        if model == "deep":
            nested: Any = "bottom"
            for _ in range(300):
                nested = [nested]
            message = {"role": "assistant", "content": "deep", "extra": nested}
            return JSONResponse(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
            )
        if model == "empty-stream" and payload.get("stream"):
            return Response(b"data: [DONE]\n\n", media_type="text/event-stream")
        text = (
            model[6:] if model.startswith("reply:") else "reply: " + _last_user(payload["messages"])
        )
        if model == "nul":
            text = "before\x00after"
        n = int(payload.get("n", 1))
        created = int(time.time())
        if payload.get("stream") and model != "no-stream":
            return StreamingResponse(
                _stream(model, text, n, created, payload), media_type="text/event-stream"
            )
        if model == "tools":
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": text}
            finish = "stop"
        return JSONResponse(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
                    for i in range(n)
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            },
            headers={"x-request-id": "req-123"},
        )

    async def _stream(model: str, text: str, n: int, created: int, payload: dict[str, Any]):  # type: ignore[no-untyped-def]
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {
                "id": "chatcmpl-stream",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        if model == "odd":
            # Odd but survivable upstream output: a gateway must relay it, not crash on it.
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": "odd"}}])
            yield b": keep-alive comment\n\n"
            yield b"data: not json at all\n\n"
            yield chunk(5)  # type: ignore[arg-type]
            yield chunk([{"index": 0, "delta": {"tool_calls": [{"index": "x"}, "junk"]}}])
            yield chunk([{"index": 0, "delta": {"content": " end"}, "finish_reason": "stop"}])
            yield b"data: [DONE]\n\n"
            return
        if model == "tools":
            yield chunk(
                [
                    {
                        "index": 0,
                        "delta": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": "lookup", "arguments": ""},
                                }
                            ],
                        },
                        "finish_reason": None,
                    }
                ]
            )
            for part in ('{"q": ', '"x"}'):
                yield chunk(
                    [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [{"index": 0, "function": {"arguments": part}}]
                            },
                            "finish_reason": None,
                        }
                    ]
                )
            yield chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])
            yield b"data: [DONE]\n\n"
            return
        yield chunk(
            [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                for i in range(n)
            ]
        )
        words = text.split(" ")
        for k, word in enumerate(words):
            piece = word if k == 0 else " " + word
            for i in range(n):
                yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
            await asyncio.sleep(0.3 if model == "trickle" else 0.01)
            if model == "cut" and k == 1:
                raise ConnectionResetError("cut mid-stream on purpose")
        yield chunk([{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(n)])
        if (payload.get("stream_options") or {}).get("include_usage"):
            yield chunk([], usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        yield b"data: [DONE]\n\n"

    async def models(request: Request) -> Response:
        _keep(request, b"")
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": "json", "object": "model", "created": 0, "owned_by": "test"}],
            }
        )

    async def embeddings(request: Request) -> Response:
        body = await request.body()
        _keep(request, body)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "e",
            }
        )

    async def unknown(request: Request) -> Response:
        _keep(request, await request.body())
        message = f"Unknown request URL: {request.method} {request.url.path}"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                       "code": "unknown_url"}}, status_code=404)  # fmt: skip

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            # What OpenAI answers for any other route, seen by the tests that forward one.
            Route("/{path:path}", unknown, methods=["GET", "POST", "DELETE"]),
        ]
    )
    app.state.requests = []
    return app
