"""The README's Node snippet (the ``openai`` package from npm) against a real gateway.

The SDK comes from ``tests/clients/node/package-lock.json``: installed here with
``npm ci`` when it is not yet (nothing to install by hand)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs.gateway import ReadmeGateway, ran
from tests.docs.readme import example

NODE = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (Debian: nodejs, npm; node 20 or newer)")
    if not (NODE / "node_modules" / "openai" / "package.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE, check=True, timeout=300)
    return NODE


def test_node_sdk_gets_the_hitl_object_and_headers(gateway: ReadmeGateway, node_sdk: Path) -> None:
    result = subprocess.run(
        ["node", "--input-type=module", "-e", example("node", url=gateway.url)],
        cwd=node_sdk,  # where ``import "openai"`` finds node_modules
        env=gateway.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = ran(result).splitlines()
    assert lines[0] == "reply: How do I send feedback?"
    from_body, from_headers = lines[1].split(), lines[2].split()
    assert from_body == from_headers and from_body[0].startswith("hitl-")
    reply_id, token = from_body
    r = gateway.reply_state(reply_id, token)
    assert r.status_code == 200 and r.json()["reply_id"] == reply_id
