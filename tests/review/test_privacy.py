"""Privacy: ``[privacy] redact`` masks what is stored, logged and sent to Slack (never what
the client receives), ``hitl purge`` and ``[privacy] retain_days`` remove message text
and keep labels, aggregates, the audit trail and what the model learns.

Real gateways over the fake upstream, real SQLite files (read byte by byte, WAL too),
the Slack stand-in, the CLI through ``main``; the store's purge also on PostgreSQL."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from feedback_store import LabelRow, NewEscalation, NewExchange, Store
from feedback_store.export import audit_records
from feedback_store.purge import PURGED_REQUEST, Purged, Scope, purge_text
from middleware.cli.main import main
from middleware.flows.retention import kept_for_learning, summary
from middleware.learning.brain import Brain
from middleware.learning.model import DIGEST_PREFIX
from middleware.logs import JsonFormatter
from middleware.review.privacy import Redactor, luhn_valid, needs
from middleware.scoring.features import ExchangeView, features, without_text
from middleware.settings import ConfigError, load_settings, settings_from_mapping
from tests.conftest import GatewayFactory
from tests.support.servers import ServerThread
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
#: the patterns config.toml ships
SHIPPED = load_settings(ROOT / "config.toml", {}).privacy.redact
ADMIN = "admin-token-for-tests-0123456789"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ESCALATE_ALL = {"escalate_below": 1.0, "review_budget": 1.0, "max_reviews_per_hour": 1000}

EMAIL = "zelda.quux@example.org"
CARD = "4111 1111 1111 1111"  # a test Visa number: passes Luhn
PHONE = "+44 20 7946 0958"
ORDER = "1234567812345678"  # 16 digits that fail Luhn
SECRETS = (EMAIL, "zelda.quux", CARD, CARD.replace(" ", ""), PHONE, "7946 0958")


# -- the patterns (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"mail {EMAIL} now", True),
        ("mailto:bob+x@mail.example.co.uk", True),
        (f"card {CARD} ok", True),
        ("card 4111-1111-1111-1111", True),
        ("card 4111111111111111", True),
        ("amex 378282246310005", True),
        ("ref-4111111111111111", True),
        (f"order {ORDER} shipped", False),
        ("order 1234 5678 1234 5678", False),
        ("tracking 12345678123456781234", False),
        (f"call {PHONE} today", True),
        ("call +1 (555) 123-4567", True),
        ("call +33 1 23 45 67 89", True),
        ("tel:+15551234567", True),
        ("call (555) 123-4567", True),
        ("call 555-123-4567", True),
        ("call 555.123.4567", True),
        ("call 020 7946 0958", True),
        ("call 07700 900123", True),
        ("on 2024-08-06 we", False),
        ("at 2024-08-06 12:30", False),
        ("version 1.2.3 and ip 192.168.1.1", False),
        ("model gpt-4o-2024-08-06", False),
        ("costs 1,000,000 dollars in 2024", False),
        ("refunds take 30 days", False),
        ("+1 more", False),
    ],
)
def test_the_shipped_patterns(text: str, masked: bool) -> None:
    out = Redactor(SHIPPED)(text)
    assert ("[redacted]" in out) == masked, out


def test_a_card_is_masked_only_when_it_passes_luhn() -> None:
    assert luhn_valid(CARD) and luhn_valid("378282246310005")
    assert not luhn_valid(ORDER) and not luhn_valid("4111 1111 1111 1112")
    redact = Redactor(SHIPPED)
    assert redact(f"{CARD} / {ORDER}") == f"[redacted] / {ORDER}"


def test_no_patterns_cost_nothing_and_change_nothing() -> None:
    redact = Redactor([])
    text, payload = "write to a@b.example", {"model": "m", "messages": []}
    assert not redact and redact(text) is text and redact.optional(None) is None
    assert redact.request(payload) == payload


def test_a_pattern_runs_only_on_text_that_could_match() -> None:
    """What any match needs is read from the pattern: a text without it is not scanned."""
    assert needs(SHIPPED[0]) == {"@": 1, ".": 1}
    assert needs(SHIPPED[1]) == {"0-9": 13}
    assert needs(SHIPPED[2])["+"] == 1 and needs(SHIPPED[2])["0-9"] == 8
    assert needs(SHIPPED[3]) == {"0-9": 8}
    assert needs(r"(?i)abc@") == {"@": 1}  # cased letters may match either case
    assert needs(r"a|b@") == {}  # only what every branch needs
    assert needs(r"\d{5}") == {}  # \d also matches other scripts' digits: not counted
    redact = Redactor(SHIPPED)
    assert redact(f"card {CARD}, call 555-123-4567") == "card [redacted], call [redacted]"


def test_patterns_mask_in_order_with_their_own_flags_and_groups() -> None:
    redact = Redactor([r"(?i)secret", r"(\w)\1{3,}", r"(?P<a>x)(?P=a)y"])
    assert redact("SECRET aaaa xxy ok") == "[redacted] [redacted] [redacted] ok"


def test_the_request_is_masked_but_model_and_user_are_kept() -> None:
    redact = Redactor(SHIPPED)
    payload = {
        "model": "gpt-4o-2024-08-06",
        "user": "u-17",
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": [{"type": "text", "text": f"I am {EMAIL}"}]},
            {
                "role": "assistant",
                "tool_calls": [{"function": {"arguments": json.dumps({"card": CARD})}}],
            },
        ],
        "metadata": {"contact": PHONE, "locale": "en"},
    }
    kept = redact.request(payload)
    text = json.dumps(kept)
    assert not any(s in text for s in SECRETS)
    assert kept["model"] == payload["model"] and kept["user"] == "u-17"
    assert kept["metadata"]["locale"] == "en"
    assert EMAIL in json.dumps(payload)  # the request itself is left as it was


def test_a_pattern_that_matches_nothing_but_everywhere_is_refused() -> None:
    with pytest.raises(ConfigError, match="matches the empty string"):
        settings_from_mapping({"privacy": {"redact": [r"\d*"]}})
    with pytest.raises(ConfigError, match="retain_days"):
        settings_from_mapping({"privacy": {"retain_days": -1}})


# -- nothing kept holds it: store, log, Slack -------------------------------------------


def db_bytes(db: Path) -> bytes:
    """The SQLite file and its write-ahead log, byte for byte."""
    wal = db.with_name(db.name + "-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def chat(gw: ServerThread, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "json", "messages": [{"role": "user", "content": text}], **extra}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r


def vote(gw: ServerThread, hitl: dict[str, Any], **extra: Any) -> None:
    body = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], **extra}
    r = httpx.post(gw.url + "/v1/feedback", json={"rating": "down", **body})
    assert r.status_code in (200, 201), r.text


def review(gw: ServerThread, reply_id: str, **verdict: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/reviews/{reply_id}",
        json={"reviewer": "ann", **verdict},
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )


def test_nothing_kept_holds_what_the_patterns_mask(
    gateway_factory: GatewayFactory,
    standin: SlackStandin,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gw = gateway_factory(
        environ={
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "HITL_ADMIN_TOKEN": ADMIN,
        },
        policy=ESCALATE_ALL,
        server={"log_bodies": True, "feedback_per_minute": 0},
        privacy={"redact": SHIPPED},
        slack={"enabled": True, "channel": CHANNEL, "api_url": standin.url},
    )
    question = f"I am {EMAIL}, card {CARD}, phone {PHONE}, order {ORDER}: where is it?"
    r = chat(gw, question, metadata={"contact": EMAIL})
    # The client gets the upstream's reply as it came.
    assert r.json()["choices"][0]["message"]["content"] == "reply: " + question
    hitl = r.json()["hitl"]
    vote(gw, hitl, reason="incorrect", comment=f"mail me at {EMAIL}", correction=f"call {PHONE}")
    corrected = review(gw, hitl["reply_id"], decision="correct", correction=f"Card {CARD} is ok.")
    assert corrected.status_code == 200, corrected.text
    # The reviewer's answer shows the correction as written; the store keeps it masked.
    assert corrected.json()["review"]["correction"] == f"Card {CARD} is ok."
    standin.wait_for("chat.update", count=1)

    kept = db_bytes(tmp_path / "hitl.db")
    assert b"where is it?" in kept and ORDER.encode() in kept  # stored, just masked
    for secret in SECRETS:
        assert secret.encode() not in kept, secret
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        (question_kept, features_json) = conn.execute(
            "SELECT question, features_json FROM exchange WHERE id = ?", (hitl["reply_id"],)
        ).fetchone()
    assert question_kept.count("[redacted]") == 3
    assert "where is it" not in features_json and "reply" not in orjson.loads(features_json)

    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert any('"question"' in line and "[redacted]" in line for line in lines)
    for secret in SECRETS:
        assert not any(secret in line for line in lines), secret

    slack = json.dumps([call.args for call in standin.calls])
    assert "where is it?" in slack
    for secret in SECRETS:
        assert secret not in slack, secret


def test_a_held_reply_gets_the_correction_as_written(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.holds import HOLD_ALL, held_reply_id

    pool = ThreadPoolExecutor(max_workers=1)
    gw = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN}, policy=HOLD_ALL, privacy={"redact": SHIPPED}
    )
    waiting = pool.submit(chat, gw, "Can I get a refund?")
    reply_id = held_reply_id(tmp_path / "hitl.db", "Can I get a refund?")
    written = f"Yes: write to {EMAIL} and we refund it."
    assert review(gw, reply_id, decision="correct", correction=written).status_code == 200
    answer = waiting.result(timeout=30).json()
    assert answer["choices"][0]["message"]["content"] == written
    assert answer["hitl"]["released"] == "correction"
    assert EMAIL.encode() not in db_bytes(tmp_path / "hitl.db")


# -- hitl purge ---------------------------------------------------------------------------


WORD = "zanzibarian"  # in every question: the text a purge must take away


def traffic(gw: ServerThread) -> dict[str, dict[str, Any]]:
    """Exchanges of alice (two) and bob (one), votes with comments and corrections, and
    a reviewer's correction; the hitl objects by name."""
    made = {}
    for name, user in (("a1", "alice"), ("a2", "alice"), ("b1", "bob")):
        made[name] = chat(gw, f"{WORD} question {name}", user=user).json()["hitl"]
    vote(gw, made["a1"], reason="incomplete", comment=f"{WORD} comment", correction=f"{WORD} fix")
    vote(gw, made["b1"], comment=f"{WORD} from bob")
    vote(gw, made["a2"], rating="up")
    decided = review(gw, made["a1"]["reply_id"], decision="correct", correction=f"{WORD} by ann")
    assert decided.status_code == 200, decided.text
    assert review(gw, made["b1"]["reply_id"], decision="approve").status_code == 200
    return made


def hitl_cli(*args: str, config: Path) -> int:
    return main([*args, "--config", str(config)], environ={})


def report_json(config: Path, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "report.json"
    assert hitl_cli("report", "--format", "json", "--out", str(out), config=config) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    for volatile in ("generated_at", "topics"):  # topics are clustered from the text
        report.pop(volatile)
    return report


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def test_purge_takes_the_text_and_keeps_the_facts(
    gateway_factory: GatewayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "hitl.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    gw = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN}, policy=ESCALATE_ALL, server={"feedback_per_minute": 0}
    )
    made = traffic(gw)
    labels = rows(db, "SELECT id, reply_id, source, value, weight FROM label ORDER BY id")
    before = report_json(config, tmp_path)
    capsys.readouterr()

    # --dry-run: says what would go, changes nothing.
    snapshot = rows(db, "SELECT * FROM exchange ORDER BY id")
    assert hitl_cli("purge", "--older-than", "0", "--dry-run", config=config) == 0
    out = capsys.readouterr().out
    assert out.count("would purge hitl-") == 3
    assert out.strip().endswith(
        "would purge text of 3 exchanges (2 feedback comments, 2 corrections)"
    )
    assert rows(db, "SELECT * FROM exchange ORDER BY id") == snapshot

    # --user: only that end user's exchanges (and what was written about them).
    assert hitl_cli("purge", "--user", "bob", config=config) == 0
    assert capsys.readouterr().out.strip() == (
        "purged text of 1 exchanges (1 feedback comments, 0 corrections)"
    )
    texts = dict(rows(db, "SELECT end_user, group_concat(question) FROM exchange GROUP BY 1"))
    assert texts["bob"] == "" and WORD in texts["alice"]

    # --older-than 0: everything else.
    assert hitl_cli("purge", "--older-than", "0", config=config) == 0
    assert capsys.readouterr().out.strip() == (
        "purged text of 2 exchanges (1 feedback comments, 2 corrections)"
    )
    assert WORD.encode() not in db_bytes(db)
    assert rows(db, "SELECT DISTINCT request_json, question, reply_text FROM exchange") == [
        (PURGED_REQUEST, "", "")
    ]
    for table, column in (
        ("feedback", "comment"),
        ("feedback", "correction"),
        ("escalation", "correction"),
        ("review_vote", "correction"),
    ):
        assert {v for (v,) in rows(db, f"SELECT {column} FROM {table}")} <= {"", None}
    assert rows(db, "SELECT id, reply_id, source, value, weight FROM label ORDER BY id") == labels
    assert report_json(config, tmp_path) == before
    [event] = rows(db, "SELECT data_json FROM event WHERE kind = 'purge' ORDER BY id LIMIT 1")
    assert "bob" not in event[0]

    # Running it again finds nothing to do.
    assert hitl_cli("purge", "--older-than", "0", config=config) == 0
    assert "text of 0 exchanges (0 feedback comments, 0 corrections)" in capsys.readouterr().out

    # The audit still lists every reviewed reply, its votes and decision, and no hash.
    audit = tmp_path / "audit.jsonl"
    assert hitl_cli("export", "--audit", "--out", str(audit), config=config) == 0
    records = {r["reply_id"]: r for r in map(json.loads, audit.read_text().splitlines())}
    assert set(records) == {h["reply_id"] for h in made.values()}  # all escalated
    a1 = records[made["a1"]["reply_id"]]
    assert a1["state"] == "corrected" and a1["original_sha256"] is None
    assert a1["votes"][0]["correction_given"] is True
    assert records[made["b1"]["reply_id"]]["state"] == "approved"
    exported = tmp_path / "labelled.jsonl"
    assert hitl_cli("export", "--out", str(exported), config=config) == 0
    assert WORD not in exported.read_text() and exported.read_text().count("\n") == 3

    # The reply still answers: its decision, review and vote, without text.
    for name in ("a1", "b1"):
        hitl = made[name]
        r = httpx.get(
            f"{gw.url}/v1/replies/{hitl['reply_id']}",
            headers={"x-hitl-feedback-token": hitl["feedback_token"]},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["review"]["state"] in ("corrected", "approved") and body["answer"] is None
        assert body["feedback"]["comment"] == "" and WORD not in r.text


def test_purge_needs_a_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "none.db"}"\n', encoding="utf-8")
    assert hitl_cli("purge", config=config) == 2
    assert "--older-than DAYS, --user ID, or both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hitl_cli("purge", "--older-than", "soon", config=config)


# -- the store's purge, SQLite and PostgreSQL --------------------------------------------


def exchange_row(reply_id: str, *, user: str, at: float, reply: str, question: str) -> NewExchange:
    x = features(ExchangeView(question=question, reply=reply, model="m"))
    return NewExchange(
        id=reply_id,
        created_at=at,
        model="m",
        route="chat",
        end_user=user,
        request_json=json.dumps({"messages": [{"role": "user", "content": question}]}),
        question=question,
        reply_text=reply,
        confidence=0.4,
        decision="escalate",
        features_json=orjson.dumps(without_text(x)).decode(),
        reasons_json=json.dumps([f"reply: {WORD} pulled the score down", "low confidence"]),
    )


REPLIES = [
    "I am not sure, maybe try again later",
    "Reset it from the settings page, then sign in again",
    "Sorry, I cannot help with that",
    "Refunds take 30 days and come to the card you paid with",
    "It depends, perhaps ask support",
    "Open Settings, choose Security and follow the steps",
]


async def fill(store: Store, now: float) -> None:
    for i, text in enumerate(REPLIES * 3):
        reply_id = f"hitl-{i:03d}"
        user = "bob" if i % 3 == 0 else "alice"
        row = exchange_row(
            reply_id, user=user, at=now - 86_400 * (i % 4), reply=f"{text} {WORD}", question=f"q{i}"
        )
        await store.record_exchange(
            row, NewEscalation(reply_id=reply_id, created_at=row.created_at)
        )
        helped = "steps" in text or "settings" in text
        await store.vote(
            reply_id=reply_id,
            voter=lambda user: f"user:{user}",
            rating="up" if helped else "down",
            reason=None,
            comment=None if helped else f"{WORD} said {i}",
            correction=None,
            weight=1.0,
            now=row.created_at + 5,
        )
        if i % 2:
            await store.record_review(
                reply_id=reply_id,
                state="corrected",
                reviewer="ann",
                reason="incorrect",
                correction=f"{WORD} corrected {i}",
                value=0,
                weight=3.0,
                now=row.created_at + 10,
            )


async def learned(store: Store) -> Brain:
    brain = Brain()
    rows: list[LabelRow] = await store.labels_after(0, limit=10_000)
    for row in rows:
        brain.learn_label(row, now=0.0)
    return brain


def probe(brain: Brain) -> list[float]:
    out = []
    for text in (*REPLIES, f"maybe {WORD}", "unrelated words entirely"):
        x = features(ExchangeView(question="q", reply=text, model="m"))
        out.append(brain.predict(x) or -1.0)
    return out


async def test_purge_counts_clears_and_is_idempotent(store: Store) -> None:
    now = time.time()
    await fill(store, now)
    bob = Scope(end_user="bob")
    planned = await purge_text(store, bob, dry_run=True)
    assert planned == Purged(6, 6, 3)  # bob: 6 replies, each a thumbs-down, 3 corrected
    assert await purge_text(store, bob, keep=kept_for_learning) == planned
    assert not await purge_text(store, bob, keep=kept_for_learning)
    old = Scope(before=now - 86_400 * 1.5)  # created 2 or 3 days ago
    older = [i for i in range(18) if i % 4 >= 2 and i % 3]  # bob's are purged already
    assert (await purge_text(store, old, dry_run=True)).exchanges == len(older) == 5
    await purge_text(store, old, keep=kept_for_learning)
    kept = {r.id: r for r in [await store.get_exchange(f"hitl-{i:03d}") for i in range(18)] if r}
    purged = {i for i, r in kept.items() if r.request_json == PURGED_REQUEST}
    expected = {f"hitl-{i:03d}" for i in range(18) if i % 3 == 0 or i % 4 >= 2}
    assert purged == expected
    for reply_id in purged:
        row = kept[reply_id]
        assert row.question == row.reply_text == "" and WORD not in row.features_json
        assert json.loads(row.reasons_json) == ["low confidence"]
        assert DIGEST_PREFIX + "reply" in json.loads(row.features_json)
        feedback = await store.feedback_for(reply_id)
        assert feedback is not None and feedback.comment in ("", None)
    untouched = await store.feedback_for("hitl-004")
    assert WORD in kept["hitl-004"].reply_text
    assert untouched is not None and untouched.comment == f"{WORD} said 4"
    audit = [r async for r in audit_records(store)]
    assert len(audit) == 18
    assert {r["reply_id"] for r in audit if r["original_sha256"] is None} == purged


async def test_what_is_learned_is_the_same_after_a_purge(store: Store) -> None:
    now = time.time()
    await fill(store, now)
    before = await learned(store)
    await purge_text(store, Scope(before=now + 1), keep=kept_for_learning)
    after = await learned(store)
    assert before.labels == after.labels == 27
    assert probe(after) == probe(before)
    weights = dict(before.model["LogisticRegression"]._weights)  # type: ignore[index]
    assert dict(after.model["LogisticRegression"]._weights) == weights  # type: ignore[index]
    # Without the word counts the purge keeps, the model would learn something else.
    bare = Brain()
    for row in await store.labels_after(0, limit=10_000):
        x = {k: v for k, v in json.loads(row.features_json).items() if k[0] != DIGEST_PREFIX}
        bare.learn_label(replace(row, features_json=json.dumps(x)), now=0.0)
    assert probe(bare) != probe(before)


def test_a_summary_says_what_went() -> None:
    assert summary(Purged(3, 2, 1)) == ("text of 3 exchanges (2 feedback comments, 1 corrections)")


# -- retain_days -----------------------------------------------------------------------------


def test_retain_days_purges_old_text_at_start(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    db = tmp_path / "hitl.db"
    first = gateway_factory()
    old = chat(first, f"{WORD} old question").json()["hitl"]
    new = chat(first, "a recent question").json()["hitl"]
    first.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA secure_delete=ON")  # as the store writes: no stale copy here
        conn.execute(
            "UPDATE exchange SET created_at = ? WHERE id = ?",
            (time.time() - 2 * 86_400, old["reply_id"]),
        )
    gw = gateway_factory(privacy={"retain_days": 1})
    retention = gw.config.app.state.parts.retention  # type: ignore[attr-defined]
    assert retention.enabled

    def purged() -> bool:
        return rows(db, "SELECT question FROM exchange WHERE id = ?", old["reply_id"]) == [("",)]

    assert wait_for(purged, timeout=10), "the old exchange was not purged at start"
    assert rows(db, "SELECT question FROM exchange WHERE id = ?", new["reply_id"]) == [
        ("a recent question",)
    ]
    # The purge ends by checkpointing the write-ahead log: then no byte of it is left.
    assert wait_for(lambda: WORD.encode() not in db_bytes(db), timeout=10)


def test_retention_is_off_by_default(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    retention = gw.config.app.state.parts.retention  # type: ignore[attr-defined]
    assert not retention.enabled and retention._task is None
