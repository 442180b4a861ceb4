"""Configuration: defaults, the shipped file, overrides, and one-line error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.errors import ConfigError
from middleware.secrets import Secrets
from middleware.settings import (
    Settings,
    load_settings,
    resolve_config_path,
    settings_from_mapping,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_built_in_defaults() -> None:
    s = load_settings(None, {})
    assert s.source == "built-in defaults"
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)
    assert s.server.max_body_bytes == 20 * 1024 * 1024
    assert s.server.max_feedback_bytes == 64 * 1024
    assert s.server.client_keys_env == ""
    assert s.server.cors_origins == []
    assert s.server.stream_hitl_chunk is True
    assert s.upstream.kind == "local"
    assert s.upstream.api_key_env == "OPENAI_API_KEY"
    assert s.upstream.forward_client_auth is False
    assert s.store.url.startswith("sqlite:///")
    for value in (s.policy.escalate_below, s.policy.hold_below, s.policy.prior):
        assert 0.0 <= value <= 1.0


def test_shipped_config_is_valid_and_needs_no_network() -> None:
    s = load_settings(ROOT / "config.toml", {})
    assert s.upstream.kind == "local"
    assert s.store.url.startswith("sqlite:///")
    assert s.source == str(ROOT / "config.toml")


def test_shipped_config_holds_no_secret() -> None:
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    assert "sk-" not in text
    # Keys that hold secrets only name environment variables.
    s = load_settings(ROOT / "config.toml", {})
    assert s.upstream.api_key_env.isupper()


def test_a_file_sets_only_what_it_changes(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[server]\nport = 9001\n"), {})
    assert s.server.port == 9001
    assert s.server.host == "127.0.0.1"
    assert s.upstream == Settings().upstream


def test_env_override_beats_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    s = load_settings(path, {"HITL_SERVER_PORT": "9002", "HITL_UPSTREAM_KIND": "openai"})
    assert s.server.port == 9002
    assert s.upstream.kind == "openai"


def test_env_override_without_a_file() -> None:
    assert load_settings(None, {"HITL_SERVER_PORT": "9003"}).server.port == 9003


def test_explicit_overrides_beat_env(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    s = load_settings(path, {"HITL_SERVER_PORT": "9002"}, server={"port": 9004})
    assert s.server.port == 9004


def test_other_hitl_variables_are_not_overrides() -> None:
    s = load_settings(None, {"HITL_CONFIG": "x.toml", "HITL_TOKEN_SECRET": "s" * 32})
    assert s == load_settings(None, {})


def test_wrong_env_override_names_the_key() -> None:
    message = config_error(None, {"HITL_SERVER_PORT": "abc"})
    assert "server.port = 'abc'" in message
    assert "valid integer" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[server]\nport = "abc"\n',
            "server.port = 'abc': Input should be a valid integer, unable to parse string as an"
            " integer",
        ),
        (
            "[policy]\nescalate_below = 1.5\n",
            "policy.escalate_below = 1.5: Input should be less than or equal to 1",
        ),
        (
            "[policy]\nhold_below = -0.1\n",
            "policy.hold_below = -0.1: Input should be greater than or equal to 0",
        ),
        (
            "[server]\nprot = 8000\n",
            "server.prot: unknown key (check the spelling; see the configuration reference in"
            " README.md)",
        ),
        (
            "[sever]\nport = 8000\n",
            "sever: unknown key (check the spelling; see the configuration reference in README.md)",
        ),
        (
            '[upstream]\nbase_url = "localhost:8000"\n',
            "upstream.base_url = 'localhost:8000': must start with http:// or https:// and name"
            " a host",
        ),
        (
            '[upstream]\nkind = "vllm"\n',
            "upstream.kind = 'vllm': Input should be 'local' or 'openai'",
        ),
        (
            '[upstream]\npassthrough = ["models/"]\n',
            "upstream.passthrough = ['models/']: 'models/' is not a route below /v1: write it"
            " like '/models' (a leading slash, no trailing one), or '*' for every route",
        ),
        (
            "[server]\nmax_body_bytes = 0\n",
            "server.max_body_bytes = 0: Input should be greater than 0",
        ),
        (
            '[store]\nurl = "mysql://x"\n',
            "store.url = 'mysql://x': must be a sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
            " URL",
        ),
    ],
)
def test_wrong_value_is_one_line_naming_key_value_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    assert config_error(path) == f"config error in {path}: {expected}"


def test_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 1\n")
    assert config_error(path) == (
        f"config error in {path}: not valid TOML "
        "(Expected ']' at the end of a table declaration (at line 1, column 8))"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert config_error(path) == (
        f"config file {path} does not exist (pass --config PATH or set HITL_CONFIG)"
    )


def test_base_url_trailing_slash_is_dropped() -> None:
    s = settings_from_mapping({"upstream": {"base_url": "http://127.0.0.1:9/v1/"}})
    assert s.upstream.base_url == "http://127.0.0.1:9/v1"


def test_resolve_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, {}) is None
    assert resolve_config_path(None, {"HITL_CONFIG": "/etc/h.toml"}) == Path("/etc/h.toml")
    assert resolve_config_path("a.toml", {"HITL_CONFIG": "/etc/h.toml"}) == Path("a.toml")
    (tmp_path / "config.toml").write_text("")
    assert resolve_config_path(None, {}) == Path("config.toml")
    assert resolve_config_path(None, {"HITL_CONFIG": "b.toml"}) == Path("b.toml")


def test_secrets_come_from_the_named_variables_and_stay_hidden() -> None:
    s = settings_from_mapping(
        {"server": {"client_keys_env": "MY_KEYS"}, "upstream": {"api_key_env": "UP_KEY"}}
    )
    secrets = Secrets(s, {"MY_KEYS": " k1, k2 ,,", "UP_KEY": "sk-up", "OPENAI_API_KEY": "sk-no"})
    assert secrets.client_keys == frozenset({"k1", "k2"})
    assert secrets.upstream_api_key == "sk-up"
    assert "sk-up" not in repr(secrets)
    assert "sk-up" not in repr(s)
    none = Secrets(Settings(), {})
    assert (none.client_keys, none.upstream_api_key, none.token_secret) == (None, None, None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///hitl.db", "sqlite:///{folder}/hitl.db"),
        ("sqlite:///data/x.db?mode=rwc", "sqlite:///{folder}/data/x.db?mode=rwc"),
        ("sqlite:////srv/abs.db", "sqlite:////srv/abs.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql+psycopg://u@127.0.0.1/db", "postgresql+psycopg://u@127.0.0.1/db"),
    ],
)
def test_a_relative_sqlite_path_in_the_file_is_beside_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text(f'[store]\nurl = "{url}"\n')
    monkeypatch.chdir(tmp_path)  # somewhere else
    settings = load_settings(config, {})
    assert settings.store.url == expected.format(folder=folder.resolve())


def test_a_relative_sqlite_path_from_the_environment_stays_relative(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[store]\nurl = "sqlite:///beside.db"\n')
    settings = load_settings(config, {"HITL_STORE_URL": "sqlite:///here.db"})
    assert settings.store.url == "sqlite:///here.db"
