"""Other ``/v1/*`` routes (models, embeddings...): forwarded, not scored."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from middleware.errors import UpstreamError
from middleware.http.bodies import BodyTooLarge, read_body
from middleware.http.context import relay_headers, upstream_failure
from middleware.http.headers import forward_headers
from middleware.http.responses import error_response
from middleware.ports import Upstream, UpstreamRequest

# Routes the gateway answers itself: another method on them is a 405, never forwarded.
OWN_ROUTES = frozenset({"/chat/completions", "/feedback"})
OWN_PREFIXES = ("/replies/", "/reviews/")


class Passthrough:
    def __init__(
        self,
        *,
        upstream: Upstream,
        api_key: str | None,
        forward_client_auth: bool,
        max_body_bytes: int,
    ) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.forward_client_auth = forward_client_auth
        self.max_body_bytes = max_body_bytes

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
        if path in OWN_ROUTES or path.startswith(OWN_PREFIXES):
            return error_response(
                405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
            )
        if any(segment in (".", "..") for segment in path.split("/")):
            # The upstream client would normalise it into another route, unscored.
            return error_response(404, f"no route for {request.url.path}", "not_found")
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
