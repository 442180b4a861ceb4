"""The review queue in a real browser (headless Chromium, Playwright): sign in, see why
each reply is there, decide by keyboard, and meet a colleague's decision.

Skipped, with the reason, when there is no Chromium binary or no Playwright package.
"""

from __future__ import annotations

import contextlib
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

ANN = "ann-personal-token-0123456789"
BOB = "bob-personal-token-9876543210"
ENV = {"HITL_REVIEWER_TOKENS": f"ann:{ANN},bob:{BOB}"}
MARKUP = 'Is <img src=x onerror="window.pwned=1"> <b>bold</b> safe?'


def serve(tmp_path: Path) -> ServerThread:
    settings = gateway_settings(
        tmp_path,
        None,
        server={"feedback_per_minute": 0},
        policy={"prior": 0.1, "review_budget": 1.0, "max_reviews_per_hour": 1000},
    )
    return ServerThread(create_app(settings, environ=ENV, upstream=LocalUpstream()))


async def chat(gw: ServerThread, question: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            gw.url + "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": question}]},
        )
    assert r.status_code == 200, r.text
    return dict(r.json()["hitl"])


async def vote(gw: ServerThread, hitl: dict[str, Any], rating: str) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            gw.url + "/v1/feedback",
            json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": rating},
        )
    assert r.status_code == 201, r.text


def stored(tmp_path: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(tmp_path / "hitl.db")) as conn:
        return conn.execute(query, params).fetchall()


async def signed_in(browser: Any, gw: ServerThread, name: str, token: str) -> tuple[Any, list[str]]:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800},
        http_credentials={"username": name, "password": token},
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    await page.goto(gw.url + "/review")
    return page, problems


async def test_a_reviewer_clears_the_queue_by_keyboard(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    with serve(tmp_path) as gw:
        # Every reply is escalated while the model knows nothing (prior 0.1); then votes
        # on some teach the model a little, so the reply's words carry weight.
        taught = [await chat(gw, f"How do I send a thumbs down? ({i})") for i in range(6)]
        await chat(gw, "How do I approve a held reply?")
        await chat(gw, MARKUP)
        for i, hitl in enumerate(taught):
            await vote(gw, hitl, "down" if i % 2 else "up")
        waiting = stored(
            tmp_path, "SELECT count(*) FROM escalation WHERE state IN ('pending', 'posted')"
        )[0][0]
        assert waiting >= 8

        page, problems = await signed_in(browser, gw, "ann", ANN)
        await expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
        await expect(page.locator("header.top")).to_contain_text("Signed in as ann")
        await expect(page.locator("#count")).to_have_text(str(waiting))
        current = page.locator("article.item.current")
        await expect(current).to_have_count(1)
        # The heatmap: the reply's words, shaded by their share of the score.
        shaded = current.locator(".heat .w[style]")
        assert await shaded.count() > 0
        await expect(current.locator(".confidence")).to_contain_text("review threshold 0.30")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=False)

        reply_id = await current.get_attribute("data-reply")
        await page.keyboard.press("a")
        await expect(page.locator("#notice")).to_contain_text("Decided (approved)")
        await expect(page.locator(f'article[data-reply="{reply_id}"]')).to_have_count(0)
        await expect(page.locator("#count")).to_have_text(str(waiting - 1))
        await expect(page.locator("article.item.current")).to_have_count(1)
        label = stored(
            tmp_path, "SELECT value FROM label WHERE reply_id = ? AND source = 'reviewer'", reply_id
        )
        assert label == [(1,)]
        by = stored(tmp_path, "SELECT decided_by FROM escalation WHERE reply_id = ?", reply_id)
        assert by == [("ann",)]

        # Reject with a reason, by keyboard: r, pick, Enter.
        second = await page.locator("article.item.current").get_attribute("data-reply")
        await page.keyboard.press("r")
        await page.locator("article.item.current select").select_option("incorrect")
        await page.locator("article.item.current select").press("Enter")
        await expect(page.locator(f'article[data-reply="{second}"]')).to_have_count(0)
        assert stored(
            tmp_path, "SELECT state, decision_reason FROM escalation WHERE reply_id = ?", second
        ) == [("rejected", "incorrect")]

        # Text with markup shows as text.
        marked = page.locator("article.item", has_text="onerror")
        await expect(marked.locator(".turn.user")).to_contain_text(MARKUP)
        assert await marked.locator("img").count() == 0
        assert await page.evaluate("window.pwned") is None
        assert problems == []


async def test_a_second_reviewer_is_told_who_decided_first(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    with serve(tmp_path) as gw:
        await chat(gw, "How do I approve a held reply?")
        ann, _ = await signed_in(browser, gw, "ann", ANN)
        bob, _ = await signed_in(browser, gw, "bob", BOB)
        reply_id = await ann.locator("article.item.current").get_attribute("data-reply")
        assert await bob.locator("article.item.current").get_attribute("data-reply") == reply_id
        await ann.keyboard.press("a")
        await expect(ann.locator("#notice")).to_contain_text("Decided")
        await bob.keyboard.press("a")
        await expect(bob.locator("#notice")).to_contain_text("already decided by ann")
        by = stored(
            tmp_path, "SELECT decided_by, state FROM escalation WHERE reply_id = ?", reply_id
        )
        assert by == [("ann", "approved")]


async def test_the_page_refuses_bad_and_missing_tokens(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path) as gw:
        for headers in ({}, {"authorization": "Basic " + "bm9ib2R5Ondyb25n"}):
            async with httpx.AsyncClient() as client:
                r = await client.get(gw.url + "/review", headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Basic")
        page, _ = await signed_in(browser, gw, "ann", "wrong-token-0000000000")
        assert "Review queue" not in await page.content()
