"""The README's client snippets (OpenAI Python SDK streamed and its ``.stream()``
helper, LangChain's ``ChatOpenAI``) against a real gateway: each prints the reply id and
feedback token, and that pair opens the reply's state."""

from __future__ import annotations

from tests.docs.gateway import ReadmeGateway, ran
from tests.docs.readme import example


def pairs(output: str) -> list[tuple[str, str]]:
    """Every ``hitl-... TOKEN`` line a snippet printed."""
    found = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("hitl-"):
            found.append((parts[0], parts[1]))
    return found


def assert_opens(gateway: ReadmeGateway, reply_id: str, token: str) -> None:
    r = gateway.reply_state(reply_id, token)
    assert r.status_code == 200, r.text
    assert r.json()["reply_id"] == reply_id


def test_openai_streamed(gateway: ReadmeGateway) -> None:
    out = ran(gateway.python(example("python-stream", url=gateway.url)))
    assert out.startswith("reply: Hello\n")
    [(reply_id, token)] = pairs(out)
    assert_opens(gateway, reply_id, token)


def test_openai_stream_helper(gateway: ReadmeGateway) -> None:
    out = ran(gateway.python(example("python-stream-helper", url=gateway.url)))
    assert out.startswith("reply: Hello\n")
    # From the chunk events, then from the headers of a second request.
    (first, second) = pairs(out)
    assert first[0] != second[0]
    for reply_id, token in (first, second):
        assert_opens(gateway, reply_id, token)


def test_openai_stream_helper_final_completion_drops_hitl(gateway: ReadmeGateway) -> None:
    """Why the README reads the chunks: the helper's final completion has no ``hitl``."""
    code = (
        example("python-stream-helper", url=gateway.url).split("# Or the headers")[0]
        + "extra = stream.get_final_completion().model_extra or {}\n"
        + "print('final has hitl:', 'hitl' in extra)\n"
    )
    assert "final has hitl: False" in ran(gateway.python(code))


def test_langchain_headers(gateway: ReadmeGateway) -> None:
    out = ran(gateway.python(example("langchain", url=gateway.url)))
    assert out.startswith("reply: How do I send feedback?\n")
    [(reply_id, token)] = pairs(out)
    assert_opens(gateway, reply_id, token)
