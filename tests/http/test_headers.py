"""``forward_headers``: which client headers reach the upstream, as a table."""

from __future__ import annotations

import pytest

from middleware.http.headers import forward_headers

Headers = list[tuple[str, str]]


@pytest.mark.parametrize(
    ("client", "api_key", "forward_client_auth", "expected"),
    [
        pytest.param(
            [("Content-Type", "application/json"), ("X-Request-Id", "r1")],
            None,
            False,
            [("content-type", "application/json"), ("x-request-id", "r1")],
            id="plain headers pass, lower-cased, in order",
        ),
        pytest.param(
            [("Authorization", "Bearer sk-client")],
            "sk-up",
            False,
            [("authorization", "Bearer sk-up")],
            id="client auth replaced by the configured key",
        ),
        pytest.param(
            [("Authorization", "Bearer sk-client")],
            None,
            False,
            [],
            id="client auth dropped even without a configured key",
        ),
        pytest.param(
            [("Authorization", "Bearer sk-client")],
            "sk-up",
            True,
            [("authorization", "Bearer sk-client")],
            id="forward_client_auth sends the client's own",
        ),
        pytest.param(
            [("Accept", "*/*")],
            "sk-up",
            True,
            [("accept", "*/*"), ("authorization", "Bearer sk-up")],
            id="forward_client_auth without client auth falls back to the key",
        ),
        pytest.param(
            [
                ("Connection", "keep-alive, X-Private-Hop"),
                ("Keep-Alive", "timeout=5"),
                ("X-Private-Hop", "1"),
                ("TE", "trailers"),
                ("Trailer", "x"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"),
                ("Proxy-Authorization", "Basic abc"),
                ("Proxy-Connection", "keep-alive"),
                ("Host", "gateway.local"),
                ("Content-Length", "12"),
                ("Accept-Encoding", "gzip"),
                ("OpenAI-Organization", "org-1"),
            ],
            None,
            False,
            [("openai-organization", "org-1")],
            id="hop-by-hop and those named by Connection dropped",
        ),
        pytest.param(
            [("X-HITL-User", "alice"), ("x-hitl-risk", "high"), ("X-Hitlish", "kept")],
            None,
            False,
            [("x-hitlish", "kept")],
            id="the gateway's own x-hitl-* headers stay here",
        ),
        pytest.param([], None, False, [], id="nothing in, nothing out"),
        pytest.param([], "sk-up", False, [("authorization", "Bearer sk-up")], id="key alone"),
    ],
)
def test_forward_headers(
    client: Headers, api_key: str | None, forward_client_auth: bool, expected: Headers
) -> None:
    assert (
        forward_headers(client, api_key=api_key, forward_client_auth=forward_client_auth)
        == expected
    )


def test_authorization_never_appears_twice() -> None:
    out = forward_headers(
        [("authorization", "Bearer a"), ("Authorization", "Bearer b")],
        api_key="sk-up",
        forward_client_auth=False,
    )
    assert [v for k, v in out if k == "authorization"] == ["Bearer sk-up"]
