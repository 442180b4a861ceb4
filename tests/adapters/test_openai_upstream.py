"""The OpenAI-compatible upstream client against a real local HTTP server that closes a
kept-alive connection just as it is reused: the race every pooled client meets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.upstream.openai import OpenAIUpstream
from middleware.errors import UpstreamTimeout, UpstreamUnavailable
from middleware.ports import UpstreamReply, UpstreamRequest

BODY = b'{"id": "c", "object": "chat.completion", "choices": []}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Reads one request (headers and a content-length body); False at end of stream."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return True


class RawServer:
    """A raw asyncio server on 127.0.0.1 that answers each connection with ``answer``
    (what a subclass does wrong on purpose); ``async with`` gives its /v1 base URL."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        #: set when the server closes: an answer waiting on it stops then
        self.release = asyncio.Event()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.release.set()
        self.server.close()
        await self.server.wait_closed()


class DroppingServer(RawServer):
    """Answers the first request on each connection, then closes it when the next request
    arrives on it without answering: what a server's idle close looks like to a client
    that reused the connection a moment too late. ``drop_all`` closes before any answer."""

    def __init__(self, *, drop_all: bool = False) -> None:
        super().__init__()
        self.drop_all = drop_all
        self.connections = 0
        self.requests = 0

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = False
        while await _read_request(reader):
            self.requests += 1
            if answered or self.drop_all:
                break
            writer.write(ANSWER)
            await writer.drain()
            answered = True


def chat() -> UpstreamRequest:
    return UpstreamRequest(
        method="POST",
        path="/chat/completions",
        query="",
        headers=[("content-type", "application/json")],
        body=b'{"model": "m", "messages": []}',
    )


@pytest.fixture
async def dropping() -> AsyncIterator[tuple[DroppingServer, str]]:
    server = DroppingServer()
    async with server as url:
        yield server, url


async def test_a_reused_connection_closed_by_the_server_is_retried_on_a_fresh_one(
    dropping: tuple[DroppingServer, str],
) -> None:
    server, url = dropping
    upstream = OpenAIUpstream(base_url=url, timeout_s=5)
    await upstream.start()
    try:
        for _ in range(3):
            reply = await upstream.send(chat())
            assert reply.status == 200
            assert reply.body == BODY
    finally:
        await upstream.aclose()
    # Requests 2 and 3 each met a dropped connection first, then went through anew.
    assert server.connections == 3
    assert server.requests == 5


async def test_a_server_that_drops_every_request_is_reported_unreachable_after_one_retry() -> None:
    server = DroppingServer(drop_all=True)
    async with server as url:
        upstream = OpenAIUpstream(base_url=url, timeout_s=5)
        await upstream.start()
        try:
            with pytest.raises(UpstreamUnavailable, match="could not be reached"):
                await upstream.send(chat())
        finally:
            await upstream.aclose()
    assert server.requests == 2


class StallingServer(RawServer):
    """Answers a stream's headers and first event (or a JSON answer's headers and half
    its body), then sends nothing more: an upstream that hangs midway."""

    def __init__(self, *, stream: bool) -> None:
        super().__init__()
        self.stream = stream

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if self.stream:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            first = b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
            writer.write(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        else:
            writer.write(ANSWER[: len(ANSWER) - len(BODY) // 2])
        await writer.drain()
        await self.release.wait()


async def test_a_stream_that_stalls_midway_times_out_after_its_first_event() -> None:
    # No timer of the gateway's own per read: the session's sock_read bound ends it.
    async with StallingServer(stream=True) as url:
        upstream = OpenAIUpstream(base_url=url, timeout_s=0.5)
        await upstream.start()
        try:
            stream = await upstream.open_stream(chat())
            assert not isinstance(stream, UpstreamReply)
            got: list[bytes] = []
            with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.5 s"):
                async with asyncio.timeout(10):  # the test's own bound, far above
                    async for piece in stream.chunks():
                        got.append(piece)
            assert b"Hel" in b"".join(got)
            await stream.aclose()
        finally:
            await upstream.aclose()


async def test_a_json_answer_that_stalls_midway_times_out() -> None:
    # One deadline for the whole exchange, request to last byte.
    async with StallingServer(stream=False) as url:
        upstream = OpenAIUpstream(base_url=url, timeout_s=0.5)
        await upstream.start()
        try:
            with pytest.raises(UpstreamTimeout):
                async with asyncio.timeout(10):
                    await upstream.send(chat())
        finally:
            await upstream.aclose()
