"""The chat page in a real browser: headless Chromium driven by Playwright.

Skipped, with the reason, when there is no Chromium binary (Debian: ``apt install
chromium``) or no Playwright package. The gateway answers from the embedded local
model, slowed a little per piece so the stream can be seen arriving.
"""

from __future__ import annotations

import contextlib
import html
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.upstream.local import LocalUpstream
from middleware.app import create_app
from tests.conftest import gateway_settings
from tests.support.servers import ServerThread

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ADMIN = "browser-admin-token"


def serve(tmp_path: Path, **sections: dict[str, Any]) -> ServerThread:
    tmp_path.mkdir(exist_ok=True)
    settings = gateway_settings(tmp_path, None, **sections)
    upstream = LocalUpstream(stream_delay_s=0.04)
    return ServerThread(
        create_app(settings, environ={"HITL_ADMIN_TOKEN": ADMIN}, upstream=upstream)
    )


def stored(tmp_path: Path, query: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(tmp_path / "hitl.db")) as conn:
        return conn.execute(query).fetchall()


async def open_page(browser: Any, url: str) -> tuple[Any, list[str], list[str]]:
    page = await browser.new_page(viewport={"width": 920, "height": 860})
    problems: list[str] = []
    requested: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(url + "/")
    # Record every text the answer box shows, to see it grow piece by piece.
    await page.evaluate(
        """() => {
        window.shown = [];
        new MutationObserver(() => {
          const box = document.querySelector(".turn.answer:last-child .text");
          if (box && box.textContent) window.shown.push(box.textContent);
        }).observe(document.getElementById("messages"),
                   {subtree: true, childList: true, characterData: true});
        }"""
    )
    return page, problems, requested


async def ask(page: Any, question: str) -> Any:
    from playwright.async_api import expect

    box = page.get_by_label("Your question")
    await box.fill(question)
    await box.press("Enter")  # Enter sends: the keyboard path
    answer = page.locator(".turn.answer").last
    await expect(answer.locator(".text")).to_have_attribute("aria-busy", "false", timeout=15000)
    return answer


async def test_ask_read_the_stream_and_vote_thumbs_down(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    with serve(tmp_path) as gw:
        page, problems, requested = await open_page(browser, gw.url)
        await expect(page.get_by_role("heading", name="Ask hitl-gateway")).to_be_visible()
        answer = await ask(page, "How do I send a thumbs down?")
        text = await answer.locator(".text").text_content()
        assert "/v1/feedback" in text
        shown = await page.evaluate("window.shown")
        growing = [s for s in shown if s != text and text.startswith(s)]
        assert len(set(growing)) >= 3, shown  # it arrived in pieces, not at once
        assert await answer.locator(".notice").is_hidden()  # delivered, not reviewed

        await answer.get_by_role("button", name="Not helpful").click()
        reasons = answer.get_by_role("group", name="What was wrong with it?")
        await expect(reasons).to_be_visible()
        await expect(answer.get_by_role("button", name="Not helpful")).to_have_attribute(
            "aria-pressed", "true"
        )
        await reasons.get_by_label("Incomplete").check()
        await answer.get_by_label("Comment (optional)").fill("It did not say which fields.")
        ARTIFACTS.mkdir(exist_ok=True)
        await answer.get_by_role("button", name="Send feedback").scroll_into_view_if_needed()
        await page.screenshot(path=str(ARTIFACTS / "chat-reasons.png"))
        await answer.get_by_role("button", name="Send feedback").click()
        await expect(answer.locator(".thanks")).to_contain_text("your feedback was sent")
        await expect(reasons).to_be_hidden()
        await page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

        assert not problems
        assert all(url.startswith(gw.url) for url in requested), requested
        [(reply_id,)] = stored(tmp_path, "SELECT id FROM exchange")
        assert stored(tmp_path, "SELECT reply_id, rating, reason, comment FROM feedback") == [
            (reply_id, "down", "incomplete", "It did not say which fields.")
        ]


HELD = {
    "escalate_below": 0.9,
    "review_budget": 1.0,
    "hold_below": 0.8,
    "risky_models": ["local"],
    "hold_heartbeat_s": 0.5,
    "hold_timeout_s": 60,
}
WAITING = "A person is checking this answer before you see it…"
FALLBACK = "Nobody could confirm this in time. Please try again or contact support."


async def send_held(page: Any, question: str) -> tuple[Any, str]:
    """Ask ``question``; return the answer turn and the reply id from the response headers
    (they arrive at once; the body waits for the reviewer)."""
    from playwright.async_api import expect

    async with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        await page.get_by_label("Your question").fill(question)
        await page.get_by_role("button", name="Send").click()
    response = await info.value
    assert response.headers["x-hitl-decision"] == "hold"
    answer = page.locator(".turn.answer").last
    await expect(answer.locator(".notice")).to_have_text(WAITING)
    return answer, response.headers["x-hitl-reply-id"]


async def review(gw: ServerThread, reply_id: str, decision: str, **fields: str) -> None:
    async with httpx.AsyncClient() as client:
        posted = await client.post(
            f"{gw.url}/v1/reviews/{reply_id}",
            json={"decision": decision, "reviewer": "ann", **fields},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
    assert posted.status_code in (200, 201), posted.text


def pieces(text: str) -> list[str]:
    """The runs of ``text`` the page would show verbatim (code spans are cut out)."""
    return [part for part in text.split("`") if len(part.strip()) >= 12]


async def assert_not_shown(page: Any, text: str) -> None:
    content = await page.content()
    plain = await page.locator("body").inner_text()
    for part in pieces(text):
        assert html.escape(part, quote=False) not in content, part
        assert part.strip() not in plain, part


async def assert_waiting(page: Any, answer: Any, reply_text: str) -> None:
    """A held reply while it waits: the notice, no text, no thumbs, even after heartbeats."""
    from playwright.async_api import expect

    await page.wait_for_timeout(1600)  # several heartbeats
    await expect(answer.locator(".notice")).to_have_text(WAITING)
    await expect(answer.locator(".text")).to_be_hidden()
    await expect(answer.locator(".feedback")).to_be_hidden()
    await expect(answer.get_by_role("button", name="Helpful", exact=True)).to_be_hidden()
    await expect(page.get_by_role("button", name="Answering…")).to_be_disabled()
    await assert_not_shown(page, reply_text)


def held_text(tmp_path: Path, reply_id: str) -> str:
    [(text,)] = stored(tmp_path, f"SELECT reply_text FROM exchange WHERE id = '{reply_id}'")
    assert text and pieces(text)
    return str(text)


async def test_escalated_answers_say_a_person_is_involved(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    policy = {"escalate_below": 0.9, "review_budget": 1.0, "hold_below": 0.8}
    with serve(tmp_path, policy=policy) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        answer = await ask(page, "What is the review budget?")
        await expect(answer.locator(".notice")).to_have_text(
            "This answer was sent to a person for review."
        )
        await expect(page.locator("#status")).to_contain_text("sent to a person for review")
        await expect(answer.get_by_role("button", name="Helpful", exact=True)).to_be_enabled()
        assert not problems


async def test_held_answer_is_shown_only_once_a_person_approved_it(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    with serve(tmp_path, policy=HELD) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        answer, reply_id = await send_held(page, "How do I run the gateway?")
        reply_text = held_text(tmp_path, reply_id)
        await assert_waiting(page, answer, reply_text)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "chat-held-waiting.png"))

        await review(gw, reply_id, "approve")
        notice = answer.locator(".notice")
        await expect(notice).to_have_text("A person checked and approved this answer.")
        await expect(answer.locator(".text")).to_have_text(reply_text.replace("`", ""))
        await expect(page.locator("#status")).to_have_text(
            "A person checked and approved this answer."
        )
        await expect(page.get_by_role("button", name="Send")).to_be_enabled()
        await answer.get_by_role("button", name="Helpful", exact=True).click()
        await expect(answer.locator(".thanks")).to_have_text("Thanks! Glad it helped.")
        await page.screenshot(path=str(ARTIFACTS / "chat-held-approved.png"))
        # Nothing but the placeholder and the released text was ever in the answer box.
        shown = set(await page.evaluate("window.shown"))
        assert shown <= {"Thinking…", reply_text.replace("`", "")}, shown
        assert stored(tmp_path, "SELECT reply_id, rating FROM feedback") == [(reply_id, "up")]
        assert not problems


async def test_held_answer_corrected_shows_exactly_the_correction(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    with serve(tmp_path, policy=HELD) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        answer, reply_id = await send_held(page, "How do I run the gateway?")
        reply_text = held_text(tmp_path, reply_id)
        await assert_waiting(page, answer, reply_text)
        await review(gw, reply_id, "correct", correction="Run `hitl serve`.")
        await expect(answer.locator(".notice")).to_have_text(
            "A person checked this answer and corrected it."
        )
        await expect(answer.locator(".text")).to_have_text("Run hitl serve.")
        await expect(answer.locator(".text code")).to_have_text("hitl serve")
        await expect(answer.get_by_role("button", name="Not helpful")).to_be_enabled()
        await assert_not_shown(page, reply_text)
        assert not problems


async def test_held_answer_rejected_shows_the_fallback_without_thumbs(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    with serve(tmp_path, policy={**HELD, "hold_fallback": FALLBACK}) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        answer, reply_id = await send_held(page, "How do I run the gateway?")
        reply_text = held_text(tmp_path, reply_id)
        await review(gw, reply_id, "reject", reason="incorrect")
        await expect(answer.locator(".notice")).to_have_text(
            "A person could not confirm this answer."
        )
        await expect(answer.locator(".text")).to_have_text(FALLBACK)
        await page.wait_for_timeout(2500)  # a poll: a rejection brings no late answer
        await expect(answer.locator(".feedback")).to_be_hidden()
        await expect(answer.locator(".late")).to_be_hidden()
        await assert_not_shown(page, reply_text)
        assert not problems


async def test_held_answer_timing_out_shows_the_fallback_then_a_late_answer(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    policy = {**HELD, "hold_timeout_s": 2, "hold_fallback": FALLBACK}
    with serve(tmp_path, policy=policy) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        answer, reply_id = await send_held(page, "How do I run the gateway?")
        reply_text = held_text(tmp_path, reply_id)
        notice = answer.locator(".notice")
        await expect(notice).to_have_text("Nobody could check this answer in time.", timeout=8000)
        await expect(answer.locator(".text")).to_have_text(FALLBACK)
        await expect(answer.locator(".feedback")).to_be_hidden()
        late = answer.locator(".late")
        await expect(late).to_have_text("If a specialist answers later, the answer appears here.")
        await assert_not_shown(page, reply_text)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "chat-held-timed-out.png"))

        await review(gw, reply_id, "approve")  # a late answer
        await expect(late.locator(".late-title")).to_have_text(
            "A specialist answered later:", timeout=8000
        )
        await expect(late.locator(".late-text")).to_have_text(reply_text.replace("`", ""))
        await expect(answer.locator(".text")).to_have_text(FALLBACK)
        await expect(notice).to_have_text("Nobody could check this answer in time.")
        await answer.get_by_role("button", name="Not helpful").click()
        await expect(answer.locator(".thanks")).to_contain_text("Tell us what was wrong")
        await answer.get_by_role("button", name="Close").click()
        await page.screenshot(path=str(ARTIFACTS / "chat-held-late-answer.png"))
        assert stored(tmp_path, "SELECT reply_id, rating FROM feedback") == [(reply_id, "down")]
        assert not problems


def sse(*events: Any) -> str:
    """A canned event stream: dicts as data events, strings as they are."""
    return "".join(e if isinstance(e, str) else f"data: {json.dumps(e)}\n\n" for e in events)


def delta(text: str) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": text}}
    return {"object": "chat.completion.chunk", "choices": [choice]}


async def test_held_text_is_never_shown_without_a_release(browser: Any, tmp_path: Path) -> None:
    """The page is robust to a stream that carries held text: it shows only what the final
    chunk says was released, and for no release only a decided answer from the server."""
    from playwright.async_api import expect

    secret = "Unconfirmed answer nobody has checked yet."
    hitl = {"reply_id": "r-1", "feedback_token": "t-1", "decision": "hold", "confidence": 0.1}
    streams = [
        # held text, then no release (a gateway from before held streams waited)
        (
            {"x-hitl-decision": "hold", "x-hitl-reply-id": "r-1"},
            sse(delta(secret), {"choices": [], "hitl": hitl}, "data: [DONE]\n\n"),
        ),
        # held text, a heartbeat, then the released correction
        (
            {"x-hitl-decision": "hold"},
            sse(
                delta(secret),
                ": waiting for a reviewer\n\n",
                delta("Only the correction."),
                {"choices": [], "hitl": {**hitl, "released": "correction"}},
                "data: [DONE]\n\n",
            ),
        ),
        # no header: a heartbeat before any content says it is held all the same
        (
            {},
            sse(
                ": waiting for a reviewer\n\n",
                delta("The approved text."),
                {"choices": [], "hitl": {**hitl, "released": "original"}},
                "data: [DONE]\n\n",
            ),
        ),
    ]

    async def chat(route: Any) -> None:
        headers, body = streams.pop(0)
        await route.fulfill(
            status=200, headers={"content-type": "text/event-stream", **headers}, body=body
        )

    async def replies(route: Any) -> None:
        view = {"reply_id": "r-1", "held": True, "answer": None, "review": {"state": "rejected"}}
        await route.fulfill(status=200, json=view)

    with serve(tmp_path) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        await page.route("**/v1/chat/completions", chat)
        await page.route("**/v1/replies/*", replies)
        await page.get_by_label("Your question").fill("First?")
        await page.get_by_role("button", name="Send").click()
        first = page.locator(".turn.answer").nth(0)
        await expect(first.locator(".notice")).to_have_text(
            "A person could not confirm this answer. Please try again or contact support."
        )
        await expect(first.locator(".text")).to_be_hidden()
        await expect(first.locator(".feedback")).to_be_hidden()

        await page.get_by_label("Your question").fill("Second?")
        await page.get_by_role("button", name="Send").click()
        second = page.locator(".turn.answer").nth(1)
        await expect(second.locator(".notice")).to_have_text(
            "A person checked this answer and corrected it."
        )
        await expect(second.locator(".text")).to_have_text("Only the correction.")
        assert secret not in await page.content()
        assert secret not in "".join(await page.evaluate("window.shown"))

        await page.evaluate("window.shown = []")
        await page.get_by_label("Your question").fill("Third?")
        await page.get_by_role("button", name="Send").click()
        third = page.locator(".turn.answer").nth(2)
        await expect(third.locator(".notice")).to_have_text(
            "A person checked and approved this answer."
        )
        await expect(third.locator(".text")).to_have_text("The approved text.")
        await expect(third.get_by_role("button", name="Helpful", exact=True)).to_be_enabled()
        assert set(await page.evaluate("window.shown")) <= {"Thinking…", "The approved text."}
        assert secret not in await page.content()
        assert not problems
