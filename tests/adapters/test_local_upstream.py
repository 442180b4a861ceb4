"""The embedded ``local`` upstream: retrieval, the OpenAI wire format (JSON and SSE), routes."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pytest
import uvicorn
from openai import AsyncOpenAI

from adapters.upstream.knowledge import Retriever, load_knowledge_base
from adapters.upstream.local import (
    NO_ANSWER,
    LocalStream,
    LocalUpstream,
    query_text,
    split_pieces,
)
from middleware.errors import ConfigError, UpstreamUnavailable
from middleware.ports import Upstream, UpstreamReply, UpstreamRequest
from middleware.settings import Settings

KB = {entry.id: entry for entry in load_knowledge_base()}


def chat(payload: dict[str, Any] | None = None, *, parsed: bool = True) -> UpstreamRequest:
    body = orjson.dumps(payload) if payload is not None else b""
    return UpstreamRequest(
        method="POST",
        path="/chat/completions",
        query="",
        headers=[("content-type", "application/json")],
        body=body,
        payload=payload if parsed else None,
    )


def ask(question: object, **extra: Any) -> dict[str, Any]:
    return {"model": "local", "messages": [{"role": "user", "content": question}], **extra}


def get(path: str) -> UpstreamRequest:
    return UpstreamRequest(method="GET", path=path, query="", headers=[], body=b"")


@pytest.fixture
async def local() -> AsyncIterator[LocalUpstream]:
    upstream = LocalUpstream()
    await upstream.start()
    yield upstream
    await upstream.aclose()


async def send_json(local: LocalUpstream, request: UpstreamRequest) -> tuple[UpstreamReply, Any]:
    reply = await local.send(request)
    return reply, json.loads(reply.body)


async def stream_events(local: LocalUpstream, payload: dict[str, Any]) -> list[bytes]:
    stream = await local.open_stream(chat(payload))
    assert isinstance(stream, LocalStream)
    try:
        return [event async for event in stream.chunks()]
    finally:
        await stream.aclose()


def parse_events(events: list[bytes]) -> list[dict[str, Any]]:
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n"), event
    assert events[-1] == b"data: [DONE]\n\n"
    return [json.loads(event[6:]) for event in events[:-1]]


# The knowledge base


def test_knowledge_base_ships_enough_unique_entries() -> None:
    entries = load_knowledge_base()
    assert len(entries) >= 40
    assert len({e.id for e in entries}) == len(entries)
    questions = [q.lower() for e in entries for q in (e.question, *e.alt_questions)]
    assert len(set(questions)) == len(questions)
    for entry in entries:
        assert entry.answer.strip() and len(entry.answer) >= 40, entry.id


def test_knowledge_base_states_the_real_defaults() -> None:
    assert 'pip install -e ".[dev]"' in KB["install"].answer
    assert "http://127.0.0.1:8000/v1" in KB["openai-client"].answer
    for reason in ("incorrect", "incomplete", "unsafe", "off-topic", "tone", "other"):
        assert reason in KB["feedback-reasons"].answer
    for status in ("201", "200", "403", "404", "413", "422", "429"):
        assert status in KB["feedback-status"].answer
    assert "hitl db upgrade" in KB["db-upgrade"].answer


def test_knowledge_base_names_only_real_settings() -> None:
    # The answers quote config keys; a renamed key in settings.py must not leave the
    # embedded model teaching the old one.
    sections = {
        name: set(field.annotation.model_fields)  # type: ignore[union-attr]
        for name, field in Settings.model_fields.items()
        if name != "source"
    }
    all_keys = set().union(*sections.values())
    checked = 0
    for entry in KB.values():
        for section, key in re.findall(r"\[([a-z]+)\] `?([a-z_]+)", entry.answer):
            assert section in sections, (entry.id, section)
            if key != "section":
                assert key in sections[section], (entry.id, section, key)
                checked += 1
        for quoted in re.findall(r"`([a-z][a-z0-9]*_[a-z0-9_]+)(?: = [^`]*)?`", entry.answer):
            assert quoted in all_keys, (entry.id, quoted)
            checked += 1
    assert checked >= 40


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{}", "non-empty JSON array"),
        ("[1]", "entry 0 must be an object"),
        ('[{"id": "a", "question": "q?"}]', "entry 0: 'answer' must be a non-empty string"),
        (
            '[{"id": "a", "question": "q", "answer": "x"}, {"id": "a", "question": "r", '
            '"answer": "y"}]',
            "entry 1: duplicate id 'a'",
        ),
        (
            '[{"id": "a", "question": "q", "answer": "x", "alt_questions": [""]}]',
            "'alt_questions' must be a list of non-empty strings",
        ),
        ("[", "not valid JSON"),
    ],
)
def test_a_broken_knowledge_base_is_refused_by_name(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_knowledge_base(raw)


# Retrieval


def test_every_question_and_alternative_retrieves_its_own_entry() -> None:
    retriever = Retriever.fit(list(KB.values()))
    for entry in KB.values():
        for question in (entry.question, *entry.alt_questions):
            match = retriever.best(question)
            assert match.entry is entry, (question, match.entry and match.entry.id)
            # a question made only of stop words ("Who are you?") has no word vector,
            # so only the character half of the similarity counts
            words = retriever.spaces[0].vector(question)
            assert match.similarity == pytest.approx(1.0 if words else 0.5, abs=1e-5)


def test_fast_query_vectors_equal_scikit_learns() -> None:
    retriever = Retriever.fit(list(KB.values()))
    for query in ("how can i install it?", "thumbs down reasons", "posgres url plz", "zzz"):
        for space in retriever.spaces:
            expected = space.vectorizer.transform([query]).toarray()[0]
            got = np.zeros_like(expected)
            for column, value in space.vector(query).items():
                got[column - space.offset] = value
            np.testing.assert_allclose(got, expected, atol=1e-9)


@pytest.mark.parametrize(
    ("question", "entry_id"),
    [
        ("how can I install it?", "install"),
        ("can I use postgres", "postgres"),
        ("thumbs down reasons", "feedback-reasons"),
        ("export data for fine tuning", "export"),
        ("confg file location", "config-file"),  # typo: character n-grams still match
        ("what happens if slack is down", "slack-outbox"),
    ],
)
async def test_paraphrased_questions_get_the_right_answer(
    local: LocalUpstream, question: str, entry_id: str
) -> None:
    reply, body = await send_json(local, chat(ask(question)))
    assert body["choices"][0]["message"]["content"] == KB[entry_id].answer
    assert local.min_similarity <= reply.signals["retrieval_score"] < 1.0


# Chat completions, JSON


async def test_a_knowledge_base_question_is_answered_in_the_openai_shape(
    local: LocalUpstream,
) -> None:
    reply, body = await send_json(local, chat(ask("What is the feedback token?", model="gpt-x")))
    assert reply.status == 200
    assert ("content-type", "application/json") in reply.headers
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["created"] > 1_700_000_000
    assert body["model"] == "gpt-x"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": KB["feedback-token"].answer}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert reply.signals["retrieval_score"] > 0.99


async def test_model_defaults_to_local_and_ids_differ(local: LocalUpstream) -> None:
    payload = {"messages": [{"role": "user", "content": "How do I start the gateway?"}]}
    _, first = await send_json(local, chat(payload))
    _, second = await send_json(local, chat(payload))
    assert first["model"] == second["model"] == "local"
    assert first["id"] != second["id"]


async def test_an_unknown_question_gets_a_plain_no_answer(local: LocalUpstream) -> None:
    reply, body = await send_json(local, chat(ask("What's the weather in Paris today?")))
    assert reply.status == 200
    content = body["choices"][0]["message"]["content"]
    assert content == NO_ANSWER
    assert content.startswith("I don't have a good answer")
    assert "hitl serve" in content and "Slack" in content  # it says what it does know
    assert 0.0 <= reply.signals["retrieval_score"] < local.min_similarity
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_min_similarity_is_the_cut() -> None:
    question = "how can I install it?"
    strict = LocalUpstream(min_similarity=0.95)
    lenient = LocalUpstream(min_similarity=0.0)
    await strict.start()
    await lenient.start()
    _, refused = await send_json(strict, chat(ask(question)))
    _, answered = await send_json(lenient, chat(ask(question)))
    assert refused["choices"][0]["message"]["content"] == NO_ANSWER
    assert answered["choices"][0]["message"]["content"] == KB["install"].answer


async def test_content_part_arrays_and_the_last_user_message(local: LocalUpstream) -> None:
    payload = {
        "model": "vision-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the weather?"},
            {"role": "assistant", "content": "No idea."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "How do I use PostgreSQL"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "instead of SQLite?"},
                ],
            },
        ],
    }
    reply, body = await send_json(local, chat(payload))
    assert body["choices"][0]["message"]["content"] == KB["postgres"].answer
    assert reply.signals["retrieval_score"] > 0.9


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "b"),
        ([{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "t"}]}], "x"),
        ([{"role": "system", "content": "s"}], ""),
        ([{"role": "user", "content": None}], ""),
        (["junk", {"role": "user", "content": "q"}, 3], "q"),
    ],
)
def test_query_text(messages: list[object], expected: str) -> None:
    assert query_text(messages) == expected


async def test_n_gives_n_choices(local: LocalUpstream) -> None:
    _, one = await send_json(local, chat(ask("What is review budget?")))
    _, two = await send_json(local, chat(ask("What is review budget?", n=2)))
    assert [c["index"] for c in two["choices"]] == [0, 1]
    for choice in two["choices"]:
        assert choice["message"]["content"] == KB["review-budget"].answer
    assert two["usage"]["completion_tokens"] == 2 * one["usage"]["completion_tokens"]


async def test_an_unparsed_body_is_read_too(local: LocalUpstream) -> None:
    _, body = await send_json(local, chat(ask("What is hitl-gateway?"), parsed=False))
    assert body["choices"][0]["message"]["content"] == KB["what-is"].answer


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"model": "local"}, "messages", "missing_required_parameter"),
        ({"messages": "hello"}, "messages", "invalid_type"),
        ({"messages": []}, "messages", "invalid_type"),
        (ask("hi", n=0), "n", "invalid_value"),
        (ask("hi", n="2"), "n", "invalid_value"),
        (ask("hi", n=True), "n", "invalid_value"),
        (ask("hi", stream="yes"), "stream", "invalid_type"),
    ],
)
async def test_malformed_chat_payloads_are_400(
    local: LocalUpstream, payload: dict[str, Any], param: str, code: str
) -> None:
    for reply in (await local.send(chat(payload)), await local.open_stream(chat(payload))):
        assert isinstance(reply, UpstreamReply)
        assert reply.status == 400
        error = json.loads(reply.body)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param and error["code"] == code
        assert error["message"]


async def test_a_body_that_is_not_a_json_object_is_400(local: LocalUpstream) -> None:
    for body in (b"{not json", b"[1, 2]"):
        request = UpstreamRequest("POST", "/chat/completions", "", [], body, None)
        reply, parsed = await send_json(local, request)
        assert reply.status == 400
        assert parsed["error"]["type"] == "invalid_request_error"


# Chat completions, streamed


async def test_stream_is_openai_sse_and_matches_the_json_answer(local: LocalUpstream) -> None:
    question = "How do I send a thumbs up or thumbs down?"
    _, whole = await send_json(local, chat(ask(question)))
    stream = await local.open_stream(chat(ask(question, stream=True, model="m1")))
    assert isinstance(stream, LocalStream)
    assert stream.status == 200
    assert ("content-type", "text/event-stream") in stream.headers
    assert stream.signals["retrieval_score"] > 0.99
    events = [event async for event in stream.chunks()]
    await stream.aclose()

    chunks = parse_events(events)
    assert len(chunks) >= 5
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "m1"
        assert "usage" not in chunk
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert all(0 < len(piece.split()) <= 4 for piece in pieces)
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        "stop"
    ]
    assert chunks[-1]["choices"][0]["delta"] == {}


async def test_stream_usage_chunk_when_asked(local: LocalUpstream) -> None:
    question = "What is the local upstream?"
    _, whole = await send_json(local, chat(ask(question)))
    payload = ask(question, stream=True, stream_options={"include_usage": True})
    chunks = parse_events(await stream_events(local, payload))
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == whole["usage"]
    # as OpenAI does: every other chunk carries "usage": null
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_stream_with_n_2_streams_both_choices(local: LocalUpstream) -> None:
    payload = ask("What is the review budget?", stream=True, n=2)
    chunks = parse_events(await stream_events(local, payload))
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(c["delta"].get("content", "") for c in mine) == KB["review-budget"].answer
        assert mine[-1]["finish_reason"] == "stop"


async def test_stream_of_the_no_answer(local: LocalUpstream) -> None:
    chunks = parse_events(await stream_events(local, ask("best pizza in new york", stream=True)))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == NO_ANSWER


async def test_a_streaming_request_read_whole_is_the_event_stream(local: LocalUpstream) -> None:
    reply = await local.send(chat(ask("What is hitl-gateway?", stream=True)))
    assert reply.status == 200
    assert ("content-type", "text/event-stream") in reply.headers
    events = [event + b"\n\n" for event in reply.body.split(b"\n\n") if event]
    chunks = parse_events(events)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == KB["what-is"].answer
    assert reply.signals["retrieval_score"] > 0.99


async def test_closing_a_stream_midway_stops_it(local: LocalUpstream) -> None:
    stream = await local.open_stream(chat(ask("What is hitl-gateway?", stream=True)))
    assert isinstance(stream, LocalStream)
    iterator = stream.chunks()
    first = await anext(iterator)
    assert first.startswith(b"data: ")
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)


@pytest.mark.parametrize(
    "text",
    ["", "one", " leading space", "a  b\n\nc ", "the quick brown fox jumps over the lazy dog"],
)
def test_split_pieces_join_back(text: str) -> None:
    pieces = split_pieces(text, 4)
    assert "".join(pieces) == text
    assert all(len(piece.split()) <= 4 for piece in pieces)


# The official openai client, over real HTTP on 127.0.0.1


def asgi_app(local: LocalUpstream) -> Any:
    """The least ASGI app that serves the adapter under /v1, as the gateway will."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"].removeprefix("/v1")
        payload = json.loads(body) if path == "/chat/completions" and body else None
        request = UpstreamRequest(scope["method"], path, "", [], body, payload)
        if payload and payload.get("stream"):
            opened = await local.open_stream(request)
        else:
            opened = await local.send(request)
        headers = [(k.encode(), v.encode()) for k, v in opened.headers]
        await send({"type": "http.response.start", "status": opened.status, "headers": headers})
        if isinstance(opened, LocalStream):
            try:
                async for chunk in opened.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                await opened.aclose()
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": opened.body})

    return app


@pytest.fixture
async def served(local: LocalUpstream) -> AsyncIterator[str]:
    config = uvicorn.Config(
        asgi_app(local), host="127.0.0.1", port=0, lifespan="off", ws="none", log_level="error"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the test server did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    await task


async def test_the_openai_client_reads_json_streams_and_models(served: str) -> None:
    async with AsyncOpenAI(base_url=served, api_key="unused", max_retries=0) as client:
        messages: Any = [{"role": "user", "content": "How do I create the database schema?"}]
        reply = await client.chat.completions.create(model="local", messages=messages, n=2)
        assert [c.message.content for c in reply.choices] == [KB["db-upgrade"].answer] * 2
        assert reply.usage is not None and reply.usage.total_tokens > 0

        stream = await client.chat.completions.create(
            model="local", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        assert text == KB["db-upgrade"].answer
        assert usage is not None and usage.completion_tokens > 0

        models = [model.id async for model in client.models.list()]
        assert models == ["local"]


# Other routes and the lifecycle


async def test_models_lists_local(local: LocalUpstream) -> None:
    reply, body = await send_json(local, get("/models"))
    assert reply.status == 200
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == "local" and model["object"] == "model"
    assert model["owned_by"] == "hitl-gateway" and isinstance(model["created"], int)
    _, one = await send_json(local, get("/models/local"))
    assert one == model


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/embeddings", 404, "not_found"),
        ("POST", "/embeddings", 404, "not_found"),
        ("GET", "/models/gpt-4o", 404, "not_found"),
        ("DELETE", "/models", 404, "not_found"),
        ("GET", "/chat/completions", 405, "method_not_allowed"),
    ],
)
async def test_other_routes_answer_in_the_openai_error_shape(
    local: LocalUpstream, method: str, path: str, status: int, code: str
) -> None:
    request = UpstreamRequest(method, path, "", [], b"{}", None)
    reply, body = await send_json(local, request)
    assert reply.status == status
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == code
    assert path in body["error"]["message"]


async def test_lifecycle() -> None:
    upstream = LocalUpstream()
    assert isinstance(upstream, Upstream)
    assert upstream.name == "local"
    with pytest.raises(UpstreamUnavailable, match="not started"):
        await upstream.send(chat(ask("What is hitl-gateway?")))
    await upstream.start()
    await upstream.start()  # idempotent
    reply = await upstream.send(chat(ask("What is hitl-gateway?")))
    assert reply.status == 200
    await upstream.aclose()
    with pytest.raises(UpstreamUnavailable):
        await upstream.send(chat(ask("What is hitl-gateway?")))


async def test_an_injected_knowledge_base_is_used() -> None:
    kb = load_knowledge_base(
        '[{"id": "p", "question": "What is the password policy?", "answer": "Twelve characters."}]'
    )
    upstream = LocalUpstream(knowledge_base=kb)
    await upstream.start()
    _, body = await send_json(upstream, chat(ask("password policy")))
    assert body["choices"][0]["message"]["content"] == "Twelve characters."


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_similarity": 1.5}, "min_similarity must be in"),
        ({"stream_delay_s": -1.0}, "stream_delay_s must be >= 0"),
        ({"stream_delay_s": math.inf}, "stream_delay_s must be >= 0"),
        ({"words_per_piece": 0}, "words_per_piece must be >= 1"),
    ],
)
def test_bad_constructor_values_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalUpstream(**kwargs)
