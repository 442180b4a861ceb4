"""The log set-up: a JSON line per record, with its fields and tracebacks, and none of
the per-record work (caller's file and line, thread and process) the lines never show."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from middleware.logs import configure


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    saved = {name: getattr(logging, name) for name in ("_srcfile", "logThreads", "logProcesses")}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, value in saved.items():
            setattr(logging, name, value)


def test_json_lines_carry_fields_and_tracebacks_without_caller_lookup(
    root_restored: None,
) -> None:
    configure("json")
    out = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    log = logging.getLogger("hitl.chat")
    log.info("reply %s deliver", "hitl-1", extra={"fields": {"reply_id": "hitl-1"}})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "reply hitl-1 deliver"
    assert first["reply_id"] == "hitl-1"
    assert first["level"] == "info" and first["logger"] == "hitl.chat"
    assert "ValueError: boom" in second["exc"]
    # The records were made without the stack walk or thread lookup.
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    assert logging._srcfile is None  # type: ignore[attr-defined]
    assert record.threadName is None and record.processName is None
