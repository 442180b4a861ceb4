"""The chat page follows a streamed answer as it grows, as chat apps do: the newest text
and then its thumbs stay in view while the reader is at the bottom; a reader who scrolls
up to read is left where they are.

Headless Chromium (skipped, saying why, without it) against a real gateway whose
upstream is a local OpenAI-compatible server streaming a long answer line by line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from middleware.app import create_app
from tests.conftest import gateway_settings
from tests.support.servers import ServerThread

pytestmark = pytest.mark.browser

LINES = 90
#: seconds between two lines: the whole answer takes about 2.7 s to arrive
PACE_S = 0.03
VIEWPORT = {"width": 800, "height": 600}


def long_answer_upstream() -> Starlette:
    async def chat(request: Request) -> StreamingResponse:
        await request.body()

        async def lines() -> AsyncIterator[bytes]:
            for i in range(LINES):
                choice = {"index": 0, "delta": {"content": f"Line {i + 1} of the answer.\n"}}
                data = {"object": "chat.completion.chunk", "model": "long", "choices": [choice]}
                yield f"data: {json.dumps(data)}\n\n".encode()
                await asyncio.sleep(PACE_S)
            done = {"index": 0, "delta": {}, "finish_reason": "stop"}
            last = {"object": "chat.completion.chunk", "choices": [done]}
            yield f"data: {json.dumps(last)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


SCROLL = """() => ({
  y: window.scrollY,
  bottom: document.documentElement.scrollHeight - window.innerHeight,
})"""
#: a comparison of the page's scroll with its bottom less a distance in px
ABOVE_BOTTOM = (
    "() => window.scrollY {} document.documentElement.scrollHeight - window.innerHeight - {}"
)


async def scroll_state(page: Any) -> dict[str, float]:
    state: dict[str, float] = await page.evaluate(SCROLL)
    return state


async def wait_lines(page: Any, at_least: int) -> dict[str, float]:
    await page.wait_for_function(
        f"""() => (document.querySelector(".turn.answer:last-child .text")
                   .textContent.match(/\\n/g) || []).length >= {at_least}""",
        timeout=15000,
    )
    return await scroll_state(page)


async def in_view(page: Any, locator: Any) -> bool:
    box = await locator.bounding_box()
    form = await page.locator("#ask").bounding_box()
    return bool(box and form and box["y"] >= 0 and box["y"] + box["height"] <= form["y"] + 1)


async def test_the_page_follows_a_long_streamed_answer_until_the_reader_scrolls_up(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    with ServerThread(long_answer_upstream()) as upstream:
        settings = gateway_settings(tmp_path, upstream.url, upstream={"timeout_s": 30})
        with ServerThread(create_app(settings, environ={})) as gw:
            page = await browser.new_page(viewport=VIEWPORT)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            await page.goto(gw.url + "/")

            box = page.get_by_label("Your question")
            await box.fill("Tell me everything.")
            await box.press("Enter")
            # While it grows, taller than the window many times over, the page keeps
            # the newest line at the bottom of the view.
            seen = []
            for lines in (30, 45, 60, 75):
                state = await wait_lines(page, lines)
                seen.append(state)
                assert state["bottom"] > 0, "the answer never outgrew the window"
                assert state["y"] >= state["bottom"] - 24, (lines, state)
            assert seen[-1]["y"] > seen[0]["y"], "the page did not move with the answer"
            answer = page.locator(".turn.answer").last
            await expect(answer.locator(".text")).to_have_attribute("aria-busy", "false")
            helpful = answer.get_by_role("button", name="Helpful", exact=True)
            await expect(helpful).to_be_visible()
            assert await in_view(page, helpful), "the thumbs are out of view after the answer"
            end = await scroll_state(page)
            assert end["y"] >= end["bottom"] - 24, end

            # A second long answer; the reader scrolls up to read the first one.
            await box.fill("And once more.")
            await box.press("Enter")
            await wait_lines(page, 20)
            await page.mouse.move(400, 200)
            await page.mouse.wheel(0, -900)
            await page.wait_for_function(ABOVE_BOTTOM.format("<", 400))
            left_at = (await scroll_state(page))["y"]
            later = await wait_lines(page, 70)
            assert later["bottom"] > left_at + 400
            assert abs(later["y"] - left_at) < 5, (left_at, later)
            second = page.locator(".turn.answer").last
            await expect(second.locator(".text")).to_have_attribute("aria-busy", "false")
            assert abs((await scroll_state(page))["y"] - left_at) < 5
            assert not await in_view(page, second.get_by_role("button", name="Helpful", exact=True))

            # Back at the bottom, it follows again (the next answer's growth included).
            await page.mouse.wheel(0, 100000)
            await page.wait_for_function(ABOVE_BOTTOM.format(">=", 24))
            await box.fill("A third time.")
            await box.press("Enter")
            state = await wait_lines(page, 50)
            assert state["y"] >= state["bottom"] - 24, state
            assert not problems
