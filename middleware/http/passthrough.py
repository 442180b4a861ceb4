"""Other ``/v1/*`` routes (models, embeddings...): forwarded, not scored, when
``[upstream] passthrough`` names them."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from middleware.errors import UpstreamError
from middleware.http.bodies import BodyTooLarge, read_body
from middleware.http.context import relay_headers, upstream_failure
from middleware.http.headers import forward_headers
from middleware.http.responses import error_response
from middleware.ports import Upstream, UpstreamRequest

# Routes the gateway answers itself (below /v1): never forwarded.
OWN_ROUTES = ("/chat/completions", "/feedback", "/replies", "/reviews")


def forwarded(path: str, routes: Sequence[str]) -> bool:
    """Whether ``path`` (below /v1) is one of ``routes`` or below one ("*": any)."""
    return any(route == "*" or path == route or path.startswith(route + "/") for route in routes)


def own_route(path: str) -> str | None:
    """The gateway's own route that ``path`` (below /v1) names, exactly or once an
    upstream's usual leniency is applied: a trailing or doubled slash, a backslash for a
    slash, another case.

    Forwarded, ``/chat/completions/`` would reach the model unscored and unheld, and
    servers that redirect it to the slash-less path hand the client the upstream's own
    address, so such a path is refused rather than passed on.
    """
    segments = path.lower().replace("\\", "/").split("/")
    lenient = "/" + "/".join(segment for segment in segments if segment)
    for route in OWN_ROUTES:
        if lenient == route or lenient.startswith(route + "/"):
            return route
    return None


class Passthrough:
    def __init__(
        self,
        *,
        upstream: Upstream,
        api_key: str | None,
        forward_client_auth: bool,
        max_body_bytes: int,
        routes: Sequence[str],
    ) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.forward_client_auth = forward_client_auth
        self.max_body_bytes = max_body_bytes
        self.routes = tuple(routes)

    def _headers(self, request: Request) -> list[tuple[str, str]]:
        return forward_headers(
            request.headers.items(),
            api_key=self.api_key,
            forward_client_auth=self.forward_client_auth,
        )

    async def post(self, request: Request) -> Response:
        try:
            body = await read_body(request, self.max_body_bytes)
        except BodyTooLarge as exc:
            return error_response(413, str(exc), "body_too_large")
        path = request.url.path.removeprefix("/v1")
        # Percent-encoded too: the upstream decodes "chat%5Ccompletions" before it is lenient.
        if (route := own_route(path) or own_route(unquote(path))) is not None:
            as_routed = (path == route or path.startswith(route + "/")) and not (
                "//" in path or path.endswith("/") or "\\" in path
            )
            if as_routed:
                return error_response(
                    405,
                    f"{request.method} is not allowed on {request.url.path}",
                    "method_not_allowed",
                )
            return error_response(
                404,
                f"no route for {request.url.path}: the gateway's own route is /v1{route}"
                " (no trailing slash, lower case)",
                "not_found",
            )
        if any(segment in (".", "..") for segment in path.split("/")):
            # The upstream client would normalise it into another route, unscored.
            return error_response(404, f"no route for {request.url.path}", "not_found")
        if not forwarded(path, self.routes):
            return error_response(
                404,
                f"no route for {request.url.path}: the gateway forwards unscored only "
                f"[upstream] passthrough = {list(self.routes)} (chat goes to "
                "/v1/chat/completions)",
                "not_found",
            )
        upstream_request = UpstreamRequest(
            request.method,
            path,
            request.url.query,
            forward_headers(
                request.headers.items(),
                api_key=self.api_key,
                forward_client_auth=self.forward_client_auth,
            ),
            body,
        )
        try:
            reply = await self.upstream.send(upstream_request)
        except UpstreamError as exc:
            return error_response(exc.status_code, str(exc), exc.code)
        if reply.status >= 500:
            return upstream_failure(reply)
        media = dict(reply.headers).get("content-type")
        return Response(
            reply.body, status_code=reply.status, media_type=media, headers=relay_headers(reply)
        )
