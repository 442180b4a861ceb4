"""``/review``: the reviewers' queue in a browser, a thin translation onto the decision
flow Slack and the review API use (first decision wins, or the votes required).

``GET /review`` renders the page (``middleware.review.page``); ``POST
/review/{reply_id}`` takes one decision from its form: a plain form post answers with
the page again (303 to it, or the page with a notice on a refusal), the page's script
asks for JSON. Reviewers sign in with their own token (HTTP Basic, as the password, so
the browser asks for it; or Bearer). A post from another site is refused: the browser
would attach the reviewer's saved credentials to it.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from feedback_store import Store
from middleware.errors import Refused, store_errors
from middleware.flows.decision import DecisionFlow
from middleware.http.bodies import BodyTooLarge, read_body
from middleware.http.responses import error_response, json_response
from middleware.http.reviewers import Reviewers, Signed
from middleware.http.reviews import Explains
from middleware.review.items import build_item, model_input
from middleware.review.page import QueueEntry, render_queue
from middleware.vocabulary import REASONS, VERDICTS

MAX_FORM_BYTES = 64 * 1024
QUEUE_LIMIT = 200
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
REALM = 'Basic realm="hitl review", charset="UTF-8"'


def cross_site(request: Request) -> bool:
    """Whether a browser sent this from another site (the CSRF a saved login invites)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin != own


class ReviewPage:
    def __init__(
        self,
        *,
        store: Store,
        decisions: DecisionFlow,
        reviewers: Reviewers,
        model: Explains,
        threshold: float,
        votes_required: int,
    ) -> None:
        self.store = store
        self.decisions = decisions
        self.reviewers = reviewers
        self.model = model
        self.threshold = threshold
        self.votes_required = votes_required

    def _sign_in(self, request: Request) -> Signed | Response:
        return self.reviewers.sign_in(request.headers, what="the review page", challenge=REALM)

    async def _page(self, signed: Signed, notice: str | None, status: int = 200) -> Response:
        with store_errors("the review queue could not be read"):
            queued = await self.store.open_reviews(QUEUE_LIMIT)
        entries = []
        for q in queued:
            item = build_item(q.escalation, q.exchange, q.feedback, threshold=self.threshold)
            item = replace(item, votes_required=self.votes_required)
            explanation = self.model.contributions(model_input(q.exchange))
            entries.append(QueueEntry(item, explanation))
        body = render_queue(entries, reviewer=signed.name, notice=notice, limit=QUEUE_LIMIT)
        return HTMLResponse(
            body,
            status_code=status,
            headers={"content-security-policy": PAGE_CSP, "cache-control": "no-store"},
        )

    async def get(self, request: Request) -> Response:
        signed = self._sign_in(request)
        if isinstance(signed, Response):
            return signed
        done = request.query_params.get("done")
        notice = f"Decided: {done}. The next item is open." if done else None
        return await self._page(signed, notice)

    async def post(self, request: Request) -> Response:
        signed = self._sign_in(request)
        if isinstance(signed, Response):
            return signed
        if cross_site(request):
            return error_response(
                403, "a decision must come from the review page itself", "cross_site_request"
            )
        wants_json = "application/json" in request.headers.get("accept", "")
        reply_id = request.path_params["reply_id"]
        form, problem = await _read_form(request)
        decision = form.get("decision", "")
        reason = form.get("reason") or None
        correction = form.get("correction") if decision == "correct" else None
        if problem is None and decision not in VERDICTS:
            problem = ("decision", f"decision: one of {', '.join(VERDICTS)}")
        if problem is None and reason is not None and reason not in REASONS:
            problem = ("reason", f"reason: one of {', '.join(REASONS)}")
        if problem is not None:
            param, message = problem
            if wants_json:
                return error_response(422, message, "invalid_field", param=param)
            return await self._page(signed, message, status=422)
        try:
            outcome = await self.decisions.decide(
                reply_id,
                decision,  # type: ignore[arg-type]  # checked against VERDICTS above
                signed.name,
                reason if decision == "reject" else None,  # type: ignore[arg-type]
                correction,
            )
        except Refused as exc:
            if wants_json:
                raise
            return await self._page(signed, str(exc), status=exc.status_code)
        if wants_json:
            body = {"reply_id": reply_id, "applied": outcome.applied, "state": outcome.state}
            if not outcome.applied:
                return error_response(409, outcome.message, "already_decided")
            return json_response(body)
        if not outcome.applied:
            return await self._page(signed, outcome.message, status=409)
        return RedirectResponse(f"/review?done={quote(reply_id)}", status_code=303)


async def _read_form(request: Request) -> tuple[dict[str, str], tuple[str, str] | None]:
    """The urlencoded form, one value per name, or what is wrong with it."""
    try:
        body = await read_body(request, MAX_FORM_BYTES)
    except BodyTooLarge:
        return {}, ("body", f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return {}, ("body", "the form is not UTF-8")
    form = {k: v[-1] for k, v in parsed.items()}
    if any("\x00" in v for v in form.values()):
        return {}, ("body", "the form holds a NUL character")
    return form, None
