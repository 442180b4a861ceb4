"""What people and scrapers look at: ``/report`` (HTML, JSON, CSV), ``/metrics``, and the
chat page at ``/``.

The report and (when ``[report] protect_metrics``) the metrics need the admin token
from ``[report] admin_token_env`` when that variable is set: ``Authorization: Bearer
<token>``, or HTTP Basic with the token as password so a browser can open the page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from feedback_store import Store
from feedback_store.report import (
    ReportRows,
    build_report,
    exchange_table,
    load_rows,
    parse_when,
)
from middleware.http.auth import matches_any, presented_token
from middleware.http.responses import error_response, json_response
from middleware.metrics import Metrics
from middleware.reporting import render_csv, render_html

T = TypeVar("T")

# The report files carry their own CSP too; this one also forbids framing.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class ReportEndpoints:
    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        admin_token: str | None,
        admin_token_env: str,
        protect_metrics: bool,
        segment_keys: Sequence[str] | None = None,
        window: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.admin_token = admin_token
        self.admin_token_env = admin_token_env
        self.protect_metrics = protect_metrics
        self.segment_keys = segment_keys
        self.window = window
        self.clock = clock
        # A report is seconds of CPU: build one at a time, so a burst can't starve chat.
        self._building = asyncio.Semaphore(1)

    def _refused(self, request: Request) -> Response | None:
        if self.admin_token is None or matches_any(
            presented_token(request.headers), (self.admin_token,)
        ):
            return None
        return error_response(
            401,
            f"this route needs the admin token (the value of ${self.admin_token_env}): send "
            "'Authorization: Bearer <token>', or sign in with any user name and the token "
            "as password",
            "invalid_admin_token",
            headers={"www-authenticate": 'Basic realm="hitl-gateway", charset="UTF-8"'},
        )

    def _period(self, request: Request) -> tuple[float | None, float | None] | Response:
        now = self.clock()
        bounds: list[float | None] = []
        for name in ("since", "until"):
            raw = request.query_params.get(name)
            if not raw:
                bounds.append(None)
                continue
            try:
                bounds.append(parse_when(raw, now=now))
            except ValueError as exc:
                return error_response(400, f"'{name}': {exc}", "invalid_parameter", param=name)
        return bounds[0], bounds[1]

    async def _compute(
        self, request: Request, make: Callable[[ReportRows, float | None, float | None], T]
    ) -> T | Response:
        """Check the token and the period, read the rows, compute ``make`` off the loop."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        period = self._period(request)
        if isinstance(period, Response):
            return period
        since, until = period
        async with self._building:
            rows = await load_rows(self.store, since=since, until=until)
            return await anyio.to_thread.run_sync(make, rows, since, until)

    def _build(self, rows: ReportRows, since: float | None, until: float | None) -> dict[str, Any]:
        return build_report(
            rows,
            since=since,
            until=until,
            segment_keys=self.segment_keys,
            window=self.window,
            now=self.clock(),
        )

    async def html(self, request: Request) -> Response:
        page = await self._compute(request, lambda *args: render_html(self._build(*args)))
        if isinstance(page, Response):
            return page
        return Response(
            page,
            media_type="text/html",
            headers={"content-security-policy": REPORT_CSP, "cache-control": "no-store"},
        )

    async def json(self, request: Request) -> Response:
        report = await self._compute(request, self._build)
        if isinstance(report, Response):
            return report
        return json_response(report, headers={"cache-control": "no-store"})

    async def csv(self, request: Request) -> Response:
        table = await self._compute(request, lambda rows, *_: render_csv(exchange_table(rows)))
        if isinstance(table, Response):
            return table
        return Response(
            table,
            media_type="text/csv",
            headers={
                "cache-control": "no-store",
                "content-disposition": 'attachment; filename="hitl-exchanges.csv"',
            },
        )

    async def prometheus(self, request: Request) -> Response:
        if self.protect_metrics:
            refused = self._refused(request)
            if refused is not None:
                return refused
        await self.metrics.refresh(self.store)
        return Response(self.metrics.exposition(), headers={"content-type": CONTENT_TYPE_LATEST})


def report_routes(endpoints: ReportEndpoints) -> list[BaseRoute]:
    return [
        Route("/report", endpoints.html, methods=["GET"]),
        Route("/report.json", endpoints.json, methods=["GET"]),
        Route("/report.csv", endpoints.csv, methods=["GET"]),
        Route("/metrics", endpoints.prometheus, methods=["GET"]),
    ]


def chat_page_routes() -> list[BaseRoute]:
    """The demo chat page: ``/`` and its static files, shipped inside the package."""
    index = resources.files("middleware") / "static" / "index.html"

    async def page(request: Request) -> Response:
        return FileResponse(
            str(index),
            media_type="text/html",
            headers={"content-security-policy": PAGE_CSP, "cache-control": "no-cache"},
        )

    return [
        Route("/", page, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("middleware", "static")]), name="static"),
    ]
