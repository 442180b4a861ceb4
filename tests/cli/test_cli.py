"""The ``hitl`` command line: serve, db upgrade, and how they fail."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from feedback_store import current_revision, head_revision
from middleware.cli.main import main
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the gateway's own variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HITL_") and k not in ("OPENAI_API_KEY", "SLACK_BOT_TOKEN")
    }
    env.update(extra)
    return env


def hitl(
    *args: str, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "middleware.cli", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- configuration errors --------------------------------------------------------------


def test_serve_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write_config(tmp_path, "[policy]\nescalate_below = 2\n", "bad.toml")
    done = hitl("serve", "--config", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"hitl: config error in {bad}: policy.escalate_below = 2: "
        "Input should be less than or equal to 1\n"
    )


def test_serve_with_a_missing_config_exits_2_with_one_line(tmp_path: Path) -> None:
    done = hitl("serve", "--config", "nope.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "hitl: config file nope.toml does not exist (pass --config PATH or set HITL_CONFIG)\n"
    )


def test_hitl_config_picks_the_file(tmp_path: Path) -> None:
    bad = write_config(tmp_path, "[server]\nport = 'x'\n", "env.toml")
    done = hitl("serve", cwd=tmp_path, HITL_CONFIG=str(bad))
    assert done.returncode == 2
    assert done.stderr.startswith(f"hitl: config error in {bad}: server.port = 'x': ")
    assert done.stderr.count("\n") == 1


def test_main_reports_config_errors_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_config(tmp_path, '[upstream]\nbase_url = "localhost:8000"\n')
    assert main(["db", "upgrade", "--config", str(bad)], environ={}) == 2
    err = capsys.readouterr().err
    assert err == (
        f"hitl: config error in {bad}: upstream.base_url = 'localhost:8000': "
        "must start with http:// or https:// and name a host\n"
    )


# -- the database --------------------------------------------------------------------------


def test_db_upgrade_on_an_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    url = f"sqlite:///{db}"
    config = write_config(tmp_path, f'[store]\nurl = "{url}"\n')
    assert main(["db", "upgrade", "--config", str(config)], environ={}) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"upgraded from an empty database to revision {head_revision()}\n")
    assert current_revision(url) == head_revision()
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"exchange", "feedback", "label", "escalation", "keyvalue"} <= tables
    # Running it again changes nothing and says so.
    assert main(["db", "upgrade", "--config", str(config)], environ={}) == 0
    assert capsys.readouterr().out.endswith(f"already at revision {head_revision()}\n")


def test_a_database_a_newer_version_migrated_is_refused_by_serve_and_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "newer.db"
    config = write_config(tmp_path, f'[store]\nurl = "sqlite:///{db}"\n')
    assert main(["db", "upgrade", "--config", str(config)], environ={}) == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    capsys.readouterr()
    assert main(["db", "upgrade", "--config", str(config)], environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("hitl: the database is at schema revision 0099, which this version")
    assert "run that version here too" in err and "Traceback" not in err
    done = hitl("serve", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2 and "Started server" not in done.stderr
    assert "revision 0099, which this version of hitl-gateway does not know" in done.stderr


def test_serve_refuses_a_database_at_an_older_revision(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    config = write_config(tmp_path, f'[store]\nurl = "{url}"\n')
    assert main(["db", "upgrade", "--config", str(config)], environ={}) == 0
    # Stamp it as an earlier revision than this code's.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0003'")
    done = hitl("serve", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[-1].startswith("hitl: the database is at schema revision 0003")
    assert lines[-1].endswith(f"run `hitl db upgrade --config {config}`")
    # Refused before anything was served or changed.
    assert "Started server" not in done.stderr
    assert current_revision(url) == "0003"


UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1


def test_db_upgrade_on_an_unreachable_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f'[store]\nurl = "{UNREACHABLE}"\n')
    assert main(["db", "upgrade", "--config", str(config)], environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hitl: cannot upgrade the database {UNREACHABLE} (OperationalError: ")
    assert err.endswith("; check [store] url\n")
    assert err.count("\n") == 1


def test_serve_on_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[store]\nurl = "{UNREACHABLE}"\n')
    done = hitl("serve", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"hitl: cannot open the database {UNREACHABLE} (")
    assert done.stderr.count("\n") == 1


# -- serving -------------------------------------------------------------------------------


def test_serve_with_the_shipped_config_answers_offline(tmp_path: Path) -> None:
    """The README's start: ``hitl serve`` on the shipped config, no key, no network."""
    port = free_port()
    # The shipped file as it is, in a folder of its own; run from another folder.
    (tmp_path / "etc").mkdir()
    (tmp_path / "work").mkdir()
    shipped = tmp_path / "etc" / "config.toml"
    shipped.write_text((ROOT / "config.toml").read_text())
    process = subprocess.Popen(
        [sys.executable, "-m", "middleware.cli", "serve", "--config", str(shipped),
         "--port", str(port)],
        cwd=tmp_path / "work",
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "What does hitl-gateway do?"}]
        )
        assert completion.choices[0].message.content
        assert (completion.model_extra or {})["hitl"]["reply_id"]
        chunks = list(
            client.chat.completions.create(
                model="local",
                messages=[{"role": "user", "content": "What does hitl-gateway do?"}],
                stream=True,
            )
        )
        assert (chunks[-1].model_extra or {})["hitl"]["feedback_token"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
    # Ctrl-C: a graceful shutdown, then the conventional exit status of an interrupt.
    assert "Application shutdown complete" in output
    assert process.returncode in (0, 130), output
    # The store is the shipped default: a SQLite file beside the config file, wherever
    # the command ran from.
    assert (tmp_path / "etc" / "hitl.db").exists()
    assert not (tmp_path / "work" / "hitl.db").exists()
    with sqlite3.connect(tmp_path / "etc" / "hitl.db") as conn:
        assert conn.execute("SELECT count(*) FROM exchange").fetchone() == (2,)


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--workers", "2"],
        ["serve", "--no-learner"],
        ["learner"],
    ],
)
def test_a_fleet_on_sqlite_is_refused_pointing_to_postgresql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "hitl.db"}"\n')
    assert main([*argv, "--config", str(config)], environ={}) == 2
    err = capsys.readouterr().err
    assert "need PostgreSQL" in err and "Running a fleet" in err, err
    # Refused before anything was opened: no database file was made.
    assert not (tmp_path / "hitl.db").exists()


def test_serve_refuses_zero_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "hitl.db"}"\n')
    assert main(["serve", "--workers", "0", "--config", str(config)], environ={}) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err


def test_serve_says_in_one_line_what_runs_and_keeps_library_chatter_quiet(
    tmp_path: Path,
) -> None:
    """The start-up line names the upstream, the store (a SQLite file's path), the review
    mode, the policy and the model; alembic's INFO lines stay below the default level."""
    from tests.support.fleet import serving

    config = '[store]\nurl = "sqlite:///hitl.db"\n[policy]\nescalate_below = 0.25\n'
    with serving(tmp_path, config) as gateway:
        pass
    output = gateway.output()
    line = next((ln for ln in output.splitlines() if "hitl-gateway (all):" in ln), None)
    assert line is not None, output
    assert "upstream local embedded FAQ model" in line
    assert f"store SQLite file {(tmp_path / 'hitl.db').resolve()}" in line
    assert "review: review API and /review page only (no Slack)" in line
    assert "review below 0.25, hold below 0.2, budget 10%, 120 an hour" in line
    assert re.search(r"model: version 1 \(\w+\), 0 labels learned, learning here", line)
    assert "alembic" not in output, output
