"""A real ``hitl serve`` for the README's examples: a temporary folder with a
``config.toml`` (as a user's), over a local stand-in for the upstream model, with the
admin token the review API example reads, and a way to run a block as a user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_openai import make_app
from tests.support.fleet import serving
from tests.support.processes import GatewayProcess, clean_env
from tests.support.servers import ServerThread

ADMIN_TOKEN = "readme-admin-token-0123456789"

#: the README's trial settings: every reply goes to review, so the review examples have
#: something to decide (see "To see a card" in the README)
CONFIG = """\
[upstream]
kind = "openai"
base_url = "{upstream}/v1"
api_key_env = "HITL_README_UPSTREAM_KEY"

[store]
url = "sqlite:///hitl.db"

[policy]
escalate_below = 0.6
review_budget = 1.0
"""


@dataclass
class ReadmeGateway:
    process: GatewayProcess
    folder: Path

    @property
    def url(self) -> str:
        return self.process.url

    def env(self, **extra: str) -> dict[str, str]:
        """What a user's shell has: the admin token, nothing of the test's secrets, and
        no way for a client library to phone home."""
        shell = {
            # ``hitl`` as installed beside this Python, first
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HITL_ADMIN_TOKEN": ADMIN_TOKEN,
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "TIKTOKEN_CACHE_DIR": str(self.folder / "no-tiktoken-downloads"),
        }
        return clean_env(**{**shell, **extra})

    def sh(self, script: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``script`` run by bash in the gateway's folder, as pasted into a terminal."""
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.folder,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.folder,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def chat(self, text: str = "How do I send feedback?") -> dict[str, Any]:
        r = httpx.post(
            self.url + "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": text}]},
        )
        assert r.status_code == 200, r.text
        hitl: dict[str, Any] = r.json()["hitl"]
        return hitl

    def reply_state(self, reply_id: str, token: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}/v1/replies/{reply_id}", headers={"X-HITL-Feedback-Token": token}
        )


@contextlib.contextmanager
def readme_gateway(folder: Path) -> Iterator[ReadmeGateway]:
    with ServerThread(make_app()) as upstream:
        config = CONFIG.format(upstream=upstream.url)
        with serving(folder, config, env={"HITL_ADMIN_TOKEN": ADMIN_TOKEN}) as process:
            yield ReadmeGateway(process, folder)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadmeGateway]:
    with readme_gateway(tmp_path_factory.mktemp("readme")) as served:
        yield served


def ran(result: subprocess.CompletedProcess[str]) -> str:
    """The block's output, once it exited 0 (else its output, to read why)."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout
