"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM...).

One pooled ``aiohttp.ClientSession`` for the app's lifetime: the upstream client was
chosen by measurement (``bench/overhead.py``): on this 2-core machine a Starlette
passthrough over aiohttp serves several times the requests/s of one over httpx, and
the gateway's overhead budget is a ratio against that floor.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import aiohttp

from middleware.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from middleware.ports import UpstreamReply, UpstreamRequest

# Above this, aiohttp warns that writing raw bytes at once may hold the event loop
# (its own TOO_LARGE_BYTES_BODY); from a BytesIO it writes in slices, still with a length.
_LARGE_BODY = 1 << 20


# How often a request is sent again after the server dropped a reused connection before
# answering; once is what the race between its idle close and our reuse needs.
_STALE_RETRIES = 1


def _payload(body: bytes) -> bytes | io.BytesIO | None:
    if not body:
        return None
    return io.BytesIO(body) if len(body) > _LARGE_BODY else body


# Response headers that describe the transfer, not the content: never relayed.
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    }
)


def _response_headers(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in response.headers.items() if k.lower() not in _DROP_RESPONSE]


def _map_error(exc: BaseException, base_url: str, timeout_s: float) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(
            f"the upstream at {base_url} did not answer within {timeout_s:g} s "
            "(raise [upstream] timeout_s if it is just slow)"
        )
    return UpstreamUnavailable(
        f"the upstream at {base_url} could not be reached or broke the connection "
        f"({type(exc).__name__}: {exc}); check [upstream] base_url and that the server runs"
    )


class _Stream:
    def __init__(
        self, response: aiohttp.ClientResponse, *, base_url: str, read_timeout_s: float
    ) -> None:
        self.status = response.status
        self.headers = _response_headers(response)
        self.signals: dict[str, float] = {}
        self._response = response
        self._base_url = base_url
        self._read_timeout_s = read_timeout_s

    async def chunks(self) -> AsyncIterator[bytes]:
        # The session's sock_read timeout (timeout_s) bounds each wait for data: a stream
        # that stalls midway raises ServerTimeoutError here, with no timer of our own.
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise _map_error(exc, self._base_url, self._read_timeout_s) from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        self._response.release()


class OpenAIUpstream:
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"OpenAIUpstream(base_url={self.base_url!r})"

    async def start(self) -> None:
        # keepalive_timeout under the common servers' idle limits (uvicorn 5 s, gunicorn
        # 2-5 s) makes the close-while-reusing race rare; _open covers what is left.
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, ttl_dns_cache=300, keepalive_timeout=4.0
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Headers are forwarded explicitly (forward_headers); send nothing of our own.
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            auto_decompress=True,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.connect_timeout_s, sock_read=self.timeout_s
            ),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnavailable("the upstream client is not started (lifespan not run)")
        return self._session

    async def _open(self, request: UpstreamRequest) -> aiohttp.ClientResponse:
        """Send ``request`` and read the answer's headers (the caller bounds the time)."""
        url = self.base_url + request.path + (f"?{request.query}" if request.query else "")
        try:
            for attempt in range(_STALE_RETRIES + 1):
                try:
                    return await self.session.request(
                        request.method,
                        url,
                        headers=request.headers,
                        data=_payload(request.body),
                    )
                except aiohttp.ServerDisconnectedError:
                    # Almost always a pooled keep-alive connection the server closed as
                    # we reused it, before reading the request: sent again on a fresh
                    # connection it goes through (urllib3 and httpcore retry this too).
                    # A server that really drops every request is asked twice and then
                    # reported as unreachable.
                    if attempt == _STALE_RETRIES:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _map_error(exc, self.base_url, self.timeout_s) from exc
        except ValueError as exc:  # aiohttp refused to build the request (a URL it can't use)
            raise UpstreamUnavailable(
                f"the request to the upstream at {self.base_url} could not be sent ({exc}); "
                "check [upstream] base_url"
            ) from exc

    async def _read(self, response: aiohttp.ClientResponse) -> UpstreamReply:
        try:
            body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _map_error(exc, self.base_url, self.timeout_s) from exc
        finally:
            response.release()
        return UpstreamReply(status=response.status, headers=_response_headers(response), body=body)

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        # One deadline for the whole exchange, request to last byte: one timer per reply.
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read(await self._open(request))
        except TimeoutError as exc:
            raise _map_error(exc, self.base_url, self.timeout_s) from exc

    async def open_stream(self, request: UpstreamRequest) -> _Stream | UpstreamReply:
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._open(request)
                if response.status >= 300:
                    return await self._read(response)
        except TimeoutError as exc:
            raise _map_error(exc, self.base_url, self.timeout_s) from exc
        if response.content_type != "text/event-stream":
            # A JSON or HTML page where events were asked for: relayed, it would be an
            # empty reply recorded as complete.
            response.release()
            raise UpstreamError(
                f"the upstream at {self.base_url} answered a streaming request with "
                f"{response.content_type}, not text/event-stream; check that it supports "
                '"stream": true and that [upstream] base_url points at the API itself'
            )
        return _Stream(response, base_url=self.base_url, read_timeout_s=self.timeout_s)
