"""Reading requests, replies and SSE streams: pure functions, tested as tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from middleware.scoring.completion import (
    Conversation,
    StreamSummary,
    content_text,
    event_data,
    read_completion,
    read_conversation,
    split_events,
)


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (None, ""),
        ("plain", "plain"),
        ("", ""),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a\nb"),
        (
            [{"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "c"}],
            "c",
        ),
        (["raw", {"type": "text", "text": "part"}], "raw\npart"),
        ([{"type": "text", "text": 3}], ""),
        ([], ""),
        (42, ""),
        ({"type": "text", "text": "a lone part"}, "a lone part"),
    ],
)
def test_content_text(content: Any, text: str) -> None:
    assert content_text(content) == text


def msg(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([msg("user", "hi")], Conversation("hi", ())),
        (
            [
                msg("system", "be nice"),
                msg("user", "q1"),
                msg("assistant", "a1"),
                msg("user", "q2"),
            ],
            Conversation("q2", (("user", "q1"), ("bot", "a1"))),
        ),
        (
            # The last user turn is the question even when a tool or assistant turn follows it.
            [msg("user", "q"), msg("assistant", None), msg("tool", "result")],
            Conversation("q", ()),
        ),
        (
            [msg("user", [{"type": "text", "text": "parts"}])],
            Conversation("parts", ()),
        ),
        ([msg("system", "only system")], Conversation("", ())),
        ([], Conversation("", ())),
        (["not a dict", msg("user", "ok")], Conversation("ok", ())),
        (
            [msg("user" if i % 2 == 0 else "assistant", str(i)) for i in range(9)],
            Conversation("8", (("user", "4"), ("bot", "5"), ("user", "6"), ("bot", "7"))),
        ),
    ],
)
def test_read_conversation(messages: list[Any], expected: Conversation) -> None:
    assert read_conversation(messages) == expected


def test_read_conversation_without_a_user_turn_keeps_recent_history() -> None:
    conv = read_conversation([msg("assistant", str(i)) for i in range(6)], history_turns=2)
    assert conv == Conversation("", (("bot", "4"), ("bot", "5")))


def completion(**choice: Any) -> dict[str, Any]:
    return {"object": "chat.completion", "choices": [{"index": 0, **choice}]}


def test_read_completion_text_and_finish() -> None:
    summary = read_completion(
        completion(message={"role": "assistant", "content": "hello"}, finish_reason="stop")
    )
    assert (summary.text, summary.finish_reason, summary.tool_calls) == ("hello", "stop", 0)
    assert summary.logprob_mean is None


def test_read_completion_reads_the_first_of_several_choices() -> None:
    body = {
        "choices": [
            {"index": 0, "message": {"content": "first"}, "finish_reason": "stop"},
            {"index": 1, "message": {"content": "second"}, "finish_reason": "length"},
        ]
    }
    assert read_completion(body).text == "first"


def test_read_completion_tool_calls_and_parts() -> None:
    calls = [{"id": "a", "type": "function"}, {"id": "b", "type": "function"}]
    summary = read_completion(
        completion(
            message={"content": [{"type": "text", "text": "x"}], "tool_calls": calls},
            finish_reason="tool_calls",
        )
    )
    assert (summary.text, summary.tool_calls, summary.finish_reason) == ("x", 2, "tool_calls")


def test_read_completion_logprobs_mean_skips_junk() -> None:
    logprobs = {
        "content": [
            {"token": "a", "logprob": -1.0},
            {"token": "b", "logprob": -3.0},
            {"token": "c", "logprob": float("-inf")},
            {"token": "d", "logprob": "x"},
            "junk",
        ]
    }
    summary = read_completion(completion(message={"content": "ab"}, logprobs=logprobs))
    assert summary.logprob_mean == pytest.approx(-2.0)


@pytest.mark.parametrize(
    "body",
    [None, {}, {"choices": []}, {"choices": "x"}, {"choices": ["x"]}, [], "text"],
)
def test_read_completion_of_odd_bodies_is_empty(body: Any) -> None:
    summary = read_completion(body)
    assert (summary.text, summary.finish_reason, summary.tool_calls) == ("", None, 0)


def test_read_completion_message_not_an_object() -> None:
    assert read_completion(completion(message="oops", finish_reason="stop")).text == ""


@pytest.mark.parametrize(
    ("data", "events", "rest"),
    [
        (b"", [], b""),
        (b"data: 1\n\n", [b"data: 1\n\n"], b""),
        (b"data: 1\n\ndata: 2\n\ndata: 3", [b"data: 1\n\n", b"data: 2\n\n"], b"data: 3"),
        (b"data: 1\r\n\r\ndata: 2\n\n", [b"data: 1\r\n\r\n", b"data: 2\n\n"], b""),
        (b"data: 1\n\ndata: 2\r\n\r\n", [b"data: 1\n\n", b"data: 2\r\n\r\n"], b""),
        (b"data: partial\n", [], b"data: partial\n"),
        (b": ping\n\n", [b": ping\n\n"], b""),
    ],
)
def test_split_events(data: bytes, events: list[bytes], rest: bytes) -> None:
    buffer = bytearray(data)
    assert split_events(buffer) == events
    assert bytes(buffer) == rest


def test_split_events_across_arbitrary_chunk_boundaries() -> None:
    stream = b"".join(f'data: {{"n": {i}}}\n\n'.encode() for i in range(20)) + b"data: [DONE]\n\n"
    for size in (1, 2, 3, 7, 64):
        buffer = bytearray()
        out: list[bytes] = []
        for i in range(0, len(stream), size):
            buffer += stream[i : i + size]
            out += split_events(buffer)
        assert b"".join(out) == stream
        assert len(out) == 21
        assert not buffer


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: {}\n\n", b"{}"),
        (b"data:{}\n\n", b"{}"),
        (b"data: [DONE]\n\n", b"[DONE]"),
        (b"data: [DONE]\r\n\r\n", b"[DONE]"),
        (b"event: ping\ndata: 1\n\n", b"1"),
        (b"data: a\ndata: b\n\n", b"a\nb"),
        (b": keep-alive\n\n", None),
        (b"event: ping\n\n", None),
        (b"id: 3\nretry: 10\n\n", None),
    ],
)
def test_event_data(event: bytes, data: bytes | None) -> None:
    assert event_data(event) == data


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": choices, **extra}  # fmt: skip


def test_stream_summary_folds_the_first_choice() -> None:
    folded = StreamSummary()
    folded.add(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
    folded.add(
        chunk([{"index": 0, "delta": {"content": "Hel"}}, {"index": 1, "delta": {"content": "X"}}])
    )
    folded.add(chunk([{"index": 0, "delta": {"content": "lo"}}]))
    folded.add(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    folded.add(chunk([], usage={"total_tokens": 3}))
    folded.add("junk")
    summary = folded.finish()
    assert (folded.id, folded.created, folded.model) == ("c1", 7, "m")
    assert (summary.text, summary.finish_reason) == ("Hello", "stop")


def test_stream_summary_counts_tool_calls_by_index() -> None:
    folded = StreamSummary()
    for index in (0, 0, 1, 1, 1):
        call = {"index": index, "function": {"arguments": "{"}}
        folded.add(chunk([{"index": 0, "delta": {"tool_calls": [call]}}]))
    folded.add(chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
    summary = folded.finish()
    assert (summary.tool_calls, summary.finish_reason, summary.text) == (2, "tool_calls", "")


def test_stream_summary_keeps_the_first_id() -> None:
    folded = StreamSummary()
    folded.add(json.loads('{"id": "first", "created": 1, "model": "a", "choices": []}'))
    folded.add({"id": "second", "created": 2, "model": "b", "choices": []})
    assert (folded.id, folded.created, folded.model) == ("first", 1, "a")
