"""How far one request travels through the gateway's own code: the distinct files its
calls enter and the hops between them (distinct pairs of our files where one calls into
the other).

    python bench/request_path.py [--vote]

Traces one JSON chat request (and, with ``--vote``, one thumbs-down with a comment)
through the app built from the default settings over the embedded local model and a
temporary SQLite file, after start-up. It counts calls into ``middleware/``,
``adapters/`` and ``feedback_store/`` made on the event loop's thread (the store's
writer thread is the store's business): the files a maintainer reads to follow it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OURS = tuple(str(ROOT / d) + "/" for d in ("middleware", "adapters", "feedback_store"))


class Tracer:
    """Our files entered, in order, and the distinct (caller file, callee file) pairs."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.hops: set[tuple[str, str]] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        here = frame.f_code.co_filename
        if not here.startswith(OURS):
            return
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(OURS):
            caller = caller.f_back
        if caller is not None and caller.f_code.co_filename != here:
            self.hops.add((caller.f_code.co_filename, here))
        if here not in self.files:
            self.files.append(here)


def app_for(db: Path) -> Any:
    from middleware.settings import settings_from_mapping

    settings = settings_from_mapping({"store": {"url": f"sqlite:///{db}"}}, source="bench")
    try:
        from middleware.app import create_app
    except ImportError:  # the layout before the composition root was split out
        from middleware.app import build_app as create_app  # type: ignore[attr-defined,no-redef]
    return create_app(settings, environ={})


async def trace(vote: bool) -> Tracer:
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        app = app_for(Path(tmp) / "h.db")
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                ask = {
                    "model": "local",
                    "messages": [{"role": "user", "content": "How do I vote?"}],
                }
                await client.post("/v1/chat/completions", json=ask)  # warm: first-call imports
                hitl = (await client.post("/v1/chat/completions", json=ask)).json()["hitl"]
                body = {
                    "reply_id": hitl["reply_id"],
                    "token": hitl["feedback_token"],
                    "rating": "down",
                    "comment": "not what I asked",
                }
                tracer = Tracer()
                sys.setprofile(tracer)
                try:
                    if vote:
                        await client.post("/v1/feedback", json=body)
                    else:
                        await client.post("/v1/chat/completions", json=ask)
                finally:
                    sys.setprofile(None)
    return tracer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vote", action="store_true", help="trace a thumbs-down instead")
    args = parser.parse_args()
    tracer = asyncio.run(trace(args.vote))
    what = "thumbs-down with a comment" if args.vote else "JSON chat request"
    print(f"{what}: {len(tracer.files)} files, {len(tracer.hops)} cross-file hops")
    for name in tracer.files:
        print("  " + str(Path(name).relative_to(ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
