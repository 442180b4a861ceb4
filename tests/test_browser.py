"""The chat page in a real browser: headless Chromium driven by Playwright.

Skipped, with the reason, when there is no Chromium binary (Debian: ``apt install
chromium``) or no Playwright package. The gateway answers from the embedded local
model, slowed a little per piece so the stream can be seen arriving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.upstream.local import LocalUpstream
from middleware.app import create_app

from .conftest import gateway_settings
from .servers import ServerThread

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN = "browser-admin-token"


def chromium() -> str:
    for candidate in (
        os.environ.get("HITL_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("no Chromium binary: install Debian's chromium package (or set HITL_CHROMIUM)")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = chromium()
    playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    async with playwright.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


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


async def test_escalated_and_held_answers_say_a_person_is_involved(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    policy = {"escalate_below": 0.9, "review_budget": 1.0, "hold_below": 0.8}
    with serve(tmp_path, policy=policy) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        answer = await ask(page, "What is the review budget?")
        await expect(answer.locator(".notice")).to_have_text(
            "This answer was sent to a person for review."
        )
        await expect(page.locator("#status")).to_contain_text("sent to a person for review")

    with serve(tmp_path / "held", policy={**policy, "risky_models": ["local"]}) as gw:
        page, problems, _ = await open_page(browser, gw.url)
        await page.get_by_label("Your question").fill("How do I run the gateway?")
        await page.get_by_role("button", name="Send").click()
        answer = page.locator(".turn.answer").last
        notice = answer.locator(".notice")
        await expect(notice).to_have_text("A person is checking this answer before you see it…")
        await expect(answer.locator(".text")).to_be_hidden()
        [(reply_id,)] = stored(tmp_path / "held", "SELECT id FROM exchange")
        verdict = {"decision": "correct", "reviewer": "U1", "correction": "Run `hitl serve`."}
        async with httpx.AsyncClient() as client:
            posted = await client.post(
                f"{gw.url}/v1/reviews/{reply_id}",
                json=verdict,
                headers={"authorization": f"Bearer {ADMIN}"},
            )
        assert posted.status_code in (200, 201), posted.text
        await expect(notice).to_have_text(
            "A person checked this answer and corrected it.", timeout=10000
        )
        await expect(answer.locator(".text")).to_have_text("Run hitl serve.")
        await expect(answer.locator(".text code")).to_have_text("hitl serve")
        assert not problems
