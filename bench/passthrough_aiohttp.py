"""The floor: a bare Starlette passthrough over one ``aiohttp.ClientSession``.

No scoring, no recording, no header filtering: the least any Python proxy on
uvicorn (uvloop + httptools) must do. bench/overhead.py measures the gateway
against it. Run: ``python bench/passthrough_aiohttp.py --upstream URL --port N``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("User-Agent", "Accept-Encoding")
        ) as session:
            yield {"session": session}

    async def relay(request: Request) -> Response:
        session: aiohttp.ClientSession = request.state.session
        body = await request.body()
        response = await session.request(
            request.method,
            upstream + request.url.path,
            data=body,
            headers={"Content-Type": request.headers.get("content-type", "application/json")},
        )
        media_type = response.headers.get("Content-Type", "application/json")
        if media_type.startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in response.content.iter_any():
                        yield chunk
                finally:
                    response.release()

            return StreamingResponse(chunks(), response.status, media_type=media_type)
        payload = await response.read()
        response.release()
        return Response(payload, response.status, media_type=media_type)

    return Starlette(
        routes=[Route("/{path:path}", relay, methods=["GET", "POST"])], lifespan=lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8081")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
