"""The README's screenshots: the chat page and the report, as a person sees them.

    python scripts/screenshots.py [--data STREAM.jsonl] [--limit 2000] [--out docs/images]

It fills a fresh SQLite store with ``hitl replay`` (a slice of the ConvAI 2017 stream by
default, ../shared/data/convai2017_thumbs.jsonl), serves it with ``hitl serve`` on
127.0.0.1 (the embedded local model as upstream), sends a little live traffic (two
questions asked on the chat page in headless Chromium, a few more over the API, some
escalations decided through the review API), then photographs the chat page and the top
of the report. Needs Debian's ``chromium`` (or ``--chromium PATH``) and Playwright
(``pip install -e ".[dev]"``). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "convai2017_thumbs.jsonl"
ADMIN = "screenshots-admin-token"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
#: asked on the chat page: the first rated helpful, the second the one on screen
QUESTIONS = ("How do I send feedback?", "What does the report show?")
#: sent over the API, so the report has live exchanges and reviews beside the replay
LIVE = (
    "How do I configure Slack?",
    "Can I use PostgreSQL?",
    "What is a hold?",
    "How does the model learn?",
    "What is the review budget?",
    "How do I export corrections?",
    "Does it work offline?",
    "What does the confidence mean?",
    # beyond the local model's knowledge base: its weakest answers
    "What's the weather in Paris?",
    "Who won the football last night?",
    "Can you book me a table for two?",
    "Tell me a joke about databases.",
) * 3

SERVE_POLICY = "[policy]\nescalate_below = 0.99\nreview_budget = 0.6\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hitl(*args: str, env: dict[str, str], **kw: Any) -> Any:
    return subprocess.Popen([sys.executable, "-m", "middleware.cli", *args], env=env, **kw)


def wait_until_up(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"hitl serve exited ({server.returncode}); see {log}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"hitl serve did not answer on {url} within 60 s; see {log}")


def live_traffic(url: str) -> tuple[int, int]:
    """A few chats over the API, their escalations decided: (chats, decided)."""
    decided = 0
    verdicts = (
        {"decision": "approve"},
        {"decision": "reject", "reason": "incorrect"},
        {"decision": "correct", "correction": "See the Slack review section of the README."},
    )
    admin = {"authorization": f"Bearer {ADMIN}"}
    for i, question in enumerate(LIVE):
        body = {"model": "local", "messages": [{"role": "user", "content": question}]}
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()["hitl"]
        # Leave a few waiting: a queue with nothing in it shows no backlog.
        if reply["decision"] == "escalate" and i % 4 != 3:
            verdict = {**verdicts[decided % 3], "reviewer": ("ann", "bob")[decided % 2]}
            r = httpx.post(url + f"/v1/reviews/{reply['reply_id']}", json=verdict, headers=admin)
            r.raise_for_status()
            decided += 1
        elif i % 3 == 0:
            vote = {"reply_id": reply["reply_id"], "token": reply["feedback_token"]}
            httpx.post(url + "/v1/feedback", json={**vote, "rating": "up"}).raise_for_status()
    return len(LIVE), decided


async def photograph(url: str, out: Path, chromium: str) -> list[Path]:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 900})
            await page.goto(url + "/")
            for n, question in enumerate(QUESTIONS):
                box = page.get_by_label("Your question")
                await box.fill(question)
                await box.press("Enter")
                answer = page.locator(".turn.answer").nth(n)
                await expect(answer.locator(".text")).to_have_attribute(
                    "aria-busy", "false", timeout=30000
                )
                if n == 0:
                    await answer.get_by_role("button", name="Helpful", exact=True).click()
                    await expect(answer.locator(".thanks")).not_to_be_empty()
            chat = out / "chat.png"
            await page.screenshot(path=str(chat))
            report = await browser.new_page(
                viewport={"width": 1000, "height": 1500},
                http_credentials={"username": "admin", "password": ADMIN},
            )
            await report.goto(url + "/report")
            shot = out / "report.png"
            await report.screenshot(path=str(shot))
            reviews = out / "report-reviews.png"
            section = report.locator("section", has=report.locator("#reviews"))
            await section.screenshot(path=str(reviews))
            return [chat, shot, reviews]
        finally:
            await browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"stream to replay ({DATA})")
    parser.add_argument("--limit", type=int, default=2000, help="replay its first N (2000)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--chromium", default=os.environ.get("HITL_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(
            f"{args.data} not found: pass --data with a labelled JSONL stream (the ConvAI "
            "2017 one comes from deepmipt/turing-data, see shared/data/README.md)"
        )
    if not Path(args.chromium).exists():
        raise SystemExit(f"no Chromium at {args.chromium}: apt install chromium, or --chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hitl-shots-") as tmp:
        folder = Path(tmp)
        config = folder / "config.toml"
        config.write_text('[store]\nurl = "sqlite:///hitl.db"\n[upstream]\nkind = "local"\n')
        # Served with a policy that sends more to people than the default, so that a
        # handful of live chats gives the review charts something to show.
        serving = folder / "serve.toml"
        serving.write_text(config.read_text() + SERVE_POLICY)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HITL_ADMIN_TOKEN": ADMIN}
        env.pop("HITL_CONFIG", None)
        replay = hitl(
            "replay",
            str(args.data),
            "--config",
            str(config),
            "--store",
            f"sqlite:///{folder / 'hitl.db'}",
            "--limit",
            str(args.limit),
            "--no-baseline",
            "--quiet",
            env=env,
            stdout=subprocess.DEVNULL,
        )
        if replay.wait() != 0:
            raise SystemExit("hitl replay failed")
        port = free_port()
        log = folder / "serve.log"
        with log.open("wb") as out:
            server = hitl(
                "serve",
                "--config",
                str(serving),
                "--port",
                str(port),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, server, log)
            chats, decided = live_traffic(url)
            shots = asyncio.run(photograph(url, args.out, args.chromium))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"replayed {args.limit} of {args.data.name}; {chats} live chats, {decided} decided")
    for shot in shots:
        print(
            f"{shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot}: "
            f"{shot.stat().st_size // 1024} KB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
