"""A held reply is released by the process holding the client's connection, whichever
process of the fleet took the reviewer's decision; two real gateways on one PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx

from tests.fleet.test_learners import config, scalar
from tests.support.fleet import serving
from tests.support.holds import ADMIN
from tests.support.waiting import wait_for

HOLD = """
[policy]
prior = 0.1
hold_below = 0.2
hold_poll_s = 0.2
hold_timeout_s = 60
[report]
admin_token_env = "HITL_ADMIN_TOKEN"
"""


def test_a_decision_taken_on_one_host_releases_the_client_held_on_another(
    tmp_path: Path, postgres_url: str
) -> None:
    env = {"HITL_ADMIN_TOKEN": ADMIN}
    text_ = config(postgres_url, HOLD)
    with (
        serving(tmp_path, text_, env=env) as holding,
        serving(tmp_path, text_, env=env) as deciding,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        question = "refund my order of last week"
        waiting = pool.submit(
            httpx.post,
            holding.url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": question}]},
            headers={"x-hitl-risk": "high"},
            timeout=30,
        )

        def held() -> str | None:
            return scalar(
                postgres_url,
                "SELECT e.id FROM exchange e JOIN escalation s ON s.reply_id = e.id "
                "WHERE e.question = :q AND s.hold",
                q=question,
            )

        reply_id = wait_for(held, timeout=10)
        assert reply_id, "the reply was not held"
        time.sleep(0.5)
        assert not waiting.done(), "the held client was answered before anyone decided"
        correction = "A refund for last week's order is on its way."
        r = httpx.post(
            f"{deciding.url}/v1/reviews/{reply_id}",
            json={"reviewer": "ann", "decision": "correct", "correction": correction},
            headers={"authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        answer = waiting.result(timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == correction
        assert answer.json()["hitl"]["released"] == "correction"
