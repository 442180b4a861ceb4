"""A bare Starlette passthrough over one ``httpx.AsyncClient``.

``--transport aiohttp`` puts the client on ``httpx_aiohttp.AiohttpTransport`` (httpx's
API, aiohttp's connection pool and parser); ``--transport httpx`` is plain httpx
(httpcore). Same shape as passthrough_aiohttp.py, so bench/overhead.py shows what the
upstream client alone costs. Run:
``python bench/passthrough_httpx.py --transport aiohttp --upstream URL --port N``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import httpx
import uvicorn
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=256)


def create_app(upstream: str, transport: Literal["aiohttp", "httpx"]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
        pool = AiohttpTransport(limits=LIMITS) if transport == "aiohttp" else None
        async with httpx.AsyncClient(
            base_url=upstream, transport=pool, limits=LIMITS, timeout=30.0
        ) as client:
            yield {"client": client}

    async def relay(request: Request) -> Response:
        client: httpx.AsyncClient = request.state.client
        body = await request.body()
        outgoing = client.build_request(
            request.method,
            request.url.path,
            content=body,
            headers={"Content-Type": request.headers.get("content-type", "application/json")},
        )
        response = await client.send(outgoing, stream=True)
        media_type = response.headers.get("Content-Type", "application/json")
        if media_type.startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in response.aiter_raw():
                        yield chunk
                finally:
                    await response.aclose()

            return StreamingResponse(chunks(), response.status_code, media_type=media_type)
        try:
            payload = await response.aread()
        finally:
            await response.aclose()
        return Response(payload, response.status_code, media_type=media_type)

    return Starlette(
        routes=[Route("/{path:path}", relay, methods=["GET", "POST"])], lifespan=lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8081")
    parser.add_argument("--transport", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream.rstrip("/"), args.transport),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
