"""A store filled by ``hitl replay`` from a stream where the question's words decide
whether the reply helped and every reply reads the same: a model that reads the
question (``logreg-adagrad``) is better than one that reads the reply only."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_store import Store
from middleware.scoring.features import ExchangeView, without_text
from middleware.scoring.features import features as features_of
from tests.support.builders import exchange_row
from tests.support.processes import clean_env

#: the words of questions whose reply did not help, and of those whose reply did
BAD = ("refund", "broken", "cancel", "charged", "crash", "lost")
GOOD = ("hours", "address", "parking", "menu", "opening", "location")


def write_stream(path: Path, n: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(n):
            bad = rng.random() < 0.5
            word = rng.choice(BAD if bad else GOOD)
            label = int(not bad) if rng.random() > 0.05 else int(bad)
            row = {
                "id": f"r-{i}",
                "question": f"tell me about the {word} please",
                "reply": "Thanks for asking, here is what I know about that.",
                "label": label,
                "meta": {"user": f"u-{i}"},
            }
            out.write(json.dumps(row) + "\n")


def config(db: Path, model: str, **learner: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in learner.items())
    return f'[store]\nurl = "sqlite:///{db}"\n\n[learner]\nmodel = "{model}"\n{extra}'


def hitl(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "middleware.cli", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=check,
    )


def filled(tmp: Path, model: str, n: int = 360) -> Path:
    """A store replayed with ``model`` live; returns its config file."""
    stream = tmp / "stream.jsonl"
    write_stream(stream, n)
    path = tmp / f"{model}.toml"
    path.write_text(config(tmp / "hitl.db", model))
    store = f"sqlite:///{tmp / 'hitl.db'}"
    hitl(
        tmp,
        "replay",
        str(stream),
        "--config",
        str(path),
        "--store",
        store,
        "--quiet",
        "--no-baseline",
    )
    return path


@pytest.fixture(scope="module")
def reply_only_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Filled while the reply-only model was live: its predictions are near chance."""
    return filled(tmp_path_factory.mktemp("reply-only"), "logreg-adagrad-reply")


async def add_labels(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        bad = i % 2 == 0
        word = "refund" if bad else "hours"
        features = without_text(features_of(ExchangeView(question=word, reply="here it is")))
        row = exchange_row(
            f"r{i}",
            question=f"about the {word}",
            reply_text="here it is",
            features_json=json.dumps(features),
            end_user=f"u{i}",
            confidence=0.5,
        )
        await store.record_exchange(row)
        await store.vote(
            reply_id=f"r{i}",
            voter=lambda user: f"user:{user}",
            rating="down" if bad else "up",
            reason=None,
            comment=None,
            correction=None,
            weight=1.0,
        )
