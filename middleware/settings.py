"""Typed, validated settings, loaded once by the composition root.

The file names environment variables; it never holds a secret. ``HITL_<SECTION>_<KEY>``
in the environment overrides one value (parsed as a TOML value when it is one, else
taken as a string).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from middleware.errors import ConfigError
from middleware.learner_settings import LearnerSettings
from middleware.scoring_settings import ScoringSettings

MiB = 1024 * 1024
KiB = 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(20 * MiB, gt=0)
    max_feedback_bytes: int = Field(64 * KiB, gt=0)
    client_keys_env: str = ""
    cors_origins: list[str] = []
    stream_hitl_chunk: bool = True
    token_secret_env: str = "HITL_TOKEN_SECRET"
    feedback_per_minute: int = Field(60, ge=0)
    #: peers (IPs or CIDRs) whose X-Forwarded-For / Forwarded headers name the client
    trusted_proxies: list[str] = []
    #: a request body must have arrived this long after its headers (else 408)
    body_timeout_s: float = Field(30.0, gt=0)
    #: uvicorn: an idle keep-alive connection is closed after this long
    keep_alive_s: float = Field(5.0, gt=0)
    #: uvicorn: connections and requests at once before it answers 503 (0: no limit)
    limit_concurrency: int = Field(0, ge=0)
    #: uvicorn's HTTP parser; only h11 caps the header size (``max_header_bytes``)
    http: Literal["auto", "httptools", "h11"] = "auto"
    max_header_bytes: int = Field(64 * KiB, gt=0)
    log_format: Literal["text", "json"] = "text"
    log_bodies: bool = False

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR network (e.g. '10.0.0.0/8')"
                ) from None
        return [entry.strip() for entry in value]

    #: on SIGTERM, running streams get this long to finish before they are ended cleanly
    shutdown_grace_s: float = Field(30.0, ge=0)


class UpstreamSettings(_Section):
    kind: Literal["local", "openai"] = "local"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    forward_client_auth: bool = False
    max_connections: int = Field(256, gt=0)
    #: ask the upstream for token log-probabilities (a feature) when the client did not
    logprobs: bool = False
    #: routes below /v1 forwarded unscored, each with what is below it ("/models" covers
    #: "/models/gpt-4o"); "*" forwards every route. One that writes text a user reads
    #: (/completions, /responses) would reach users unscored and unheld: none by default
    passthrough: list[str] = ["/models", "/embeddings", "/moderations"]

    @field_validator("passthrough")
    @classmethod
    def _routes(cls, value: list[str]) -> list[str]:
        for route in value:
            if route != "*" and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", route):
                raise ValueError(
                    f"{route!r} is not a route below /v1: write it like '/models' "
                    "(a leading slash, no trailing one), or '*' for every route"
                )
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must start with http:// or https:// and name a host")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises on a port that is not a number below 65536)
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if "@" in parts.netloc:
            raise ValueError(
                "must not hold credentials (user:password@): put the API key in the "
                "environment variable that [upstream] api_key_env names"
            )
        if "?" in value or "#" in value:
            raise ValueError(
                "must not have a query string or fragment: give the URL the API paths "
                "(/chat/completions...) are appended to, such as https://api.openai.com/v1"
            )
        if re.search(r"\s", value) or not parts.hostname:
            raise ValueError("must name a host, without spaces")
        return value.rstrip("/")


class StoreSettings(_Section):
    url: str = "sqlite:///hitl.db"
    commit_batch: int = Field(256, gt=0)
    #: true: a commit goes to the OS, not to disk, before it is acknowledged (saves the
    #: fsync's wait on every reply and vote; a power cut may lose the last commits)
    lose_recent_on_power_loss: bool = False
    #: where a fleet keeps its shared counters (review cap, asks, votes per client);
    #: empty: in PostgreSQL when the store is there, else in the one process's memory
    redis_url: str = ""

    def __repr_args__(self) -> Any:
        # A PostgreSQL or Redis URL may carry a password: never print it with the settings.
        for name, value in super().__repr_args__():
            yield name, hide_password(value) if name in ("url", "redis_url") else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises on a port that is not a number below 65536)
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if (parts.scheme in ("redis", "rediss") and parts.hostname) or (
            parts.scheme == "unix" and parts.path
        ):
            return value
        raise ValueError(
            "must be empty or a redis://HOST[:PORT][/DB], rediss://HOST[:PORT][/DB] or "
            "unix:///PATH URL"
        )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(sqlite(\+aiosqlite)?|postgresql(\+psycopg)?)://", value):
            raise ValueError("must be a sqlite:///PATH or postgresql+psycopg://USER@HOST/DB URL")
        return value


class PolicySettings(_Section):
    prior: float = Field(0.5, ge=0, le=1)
    escalate_below: float = Field(0.3, ge=0, le=1)
    hold_below: float = Field(0.2, ge=0, le=1)
    review_budget: float = Field(0.1, ge=0, le=1)
    review_budget_slack: float = Field(0.01, ge=0, le=0.1)
    max_reviews_per_hour: int = Field(120, ge=0)
    ask_margin: float = Field(0.15, ge=0, le=0.5)
    ask_sample_rate: float = Field(0.05, ge=0, le=1)
    ask_per_user_per_hour: int = Field(10, ge=0)
    risky_models: list[str] = []
    review_downvotes: bool = True
    hold_timeout_s: float = Field(120.0, gt=0)
    #: a held stream sends an SSE comment this often while it waits
    hold_heartbeat_s: float = Field(10.0, gt=0)
    #: how often a held client's process reads the decision (one taken elsewhere)
    hold_poll_s: float = Field(1.0, gt=0)
    hold_fallback: str = (
        "A person is checking this answer and could not confirm it in time. "
        "Please try again or contact support."
    )


class SlackSettings(_Section):
    enabled: bool = False
    #: how clicks reach the gateway: Slack POSTs them to ``/slack/events`` (``http``, needs
    #: a public URL), or the gateway dials out to Slack over a WebSocket (``socket``)
    mode: Literal["http", "socket"] = "http"
    channel: str = ""
    api_url: str = "https://slack.com/api/"
    bot_token_env: str = "SLACK_BOT_TOKEN"
    #: HTTP mode only: the app's signing secret
    signing_secret_env: str = "SLACK_SIGNING_SECRET"
    #: Socket Mode only: the app-level token (``xapp-...``, scope ``connections:write``)
    app_token_env: str = "SLACK_APP_TOKEN"
    reviewers: list[str] = []
    #: the outbox's first retry delay and its cap (doubling, jittered, in between); also
    #: Socket Mode's, until its first connection (then the SDK reconnects by itself)
    retry_base_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)

    @field_validator("api_url")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError("must start with http:// or https://")
        return value if value.endswith("/") else value + "/"


class PrivacySettings(_Section):
    #: regular expressions masked before anything is stored, logged or sent to Slack
    redact: list[str] = []
    #: purge message text older than this many days, hourly (0: keep it forever)
    retain_days: float = Field(0.0, ge=0)

    @field_validator("redact")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from exc
            if compiled.fullmatch(""):
                raise ValueError(
                    f"{pattern!r} matches the empty string (it would mask between every character)"
                )
        return value


class ReviewSettings(_Section):
    #: distinct reviewers who must agree (approve, or reject/correct) before an item is
    #: decided, whichever tool they use (Slack, the review API)
    votes_required: int = Field(1, ge=1, le=10)
    #: names a variable of comma-separated NAME:TOKEN pairs: reviewers' personal tokens
    #: for the review page and API (each decision recorded under its name)
    reviewer_tokens_env: str = "HITL_REVIEWER_TOKENS"


class ReportSettings(_Section):
    admin_token_env: str = "HITL_ADMIN_TOKEN"
    protect_metrics: bool = False


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    store: StoreSettings = StoreSettings()
    learner: LearnerSettings = LearnerSettings()
    policy: PolicySettings = PolicySettings()
    scoring: ScoringSettings = ScoringSettings()
    slack: SlackSettings = SlackSettings()
    review: ReviewSettings = ReviewSettings()
    privacy: PrivacySettings = PrivacySettings()
    report: ReportSettings = ReportSettings()
    #: where the values came from, for messages; not a setting
    source: str = Field("built-in defaults", exclude=True)


def hide_password(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part and of a ``password=``
    query parameter, if any, as ``***``."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    return re.sub(r"^([\w+.-]+://[^:/@]*:).*@", r"\1***@", url)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``HITL_<SECTION>_<KEY>`` values for keys that exist, and which variable set each.

    Only known keys count, so a variable that merely shares the prefix (a client-keys
    variable named ``HITL_SERVER_KEYS``, say) is left alone.
    """
    overrides: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith("HITL_"):
            continue
        rest = name[5:].lower()
        for section, field in Settings.model_fields.items():
            model = field.annotation
            if not (isinstance(model, type) and issubclass(model, _Section | ScoringSettings)):
                continue
            key = rest.removeprefix(section + "_")
            if key == rest or key not in model.model_fields:
                continue
            try:
                value: Any = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                value = raw
            overrides.setdefault(section, {})[key] = value
            origins[f"{section}.{key}"] = name
    return overrides, origins


def _describe(error: dict[str, Any], data: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        return (
            f"{key}: unknown key (check the spelling; see the configuration reference in README.md)"
        )
    value: Any = data
    for part in error["loc"]:
        if (isinstance(value, Mapping) and part in value) or (
            isinstance(value, list) and isinstance(part, int) and part < len(value)
        ):
            value = value[part]
        else:
            value = None
            break
    if isinstance(value, str) and "://" in value:
        # A URL's user:password, query or fragment (a key?) never reaches a message or log.
        value = re.sub(r"([?#]).*", r"\1***", re.sub(r"//[^/?#]*@", "//***@", value))
    msg = msg.removeprefix("Value error, ")
    return f"{key} = {value!r}: {msg}"


def settings_from_mapping(
    data: Mapping[str, Any],
    *,
    source: str = "<mapping>",
    origins: Mapping[str, str] | None = None,
) -> Settings:
    """Validate ``data``; ``origins`` maps "section.key" to the variable that set it."""
    try:
        return Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        first: dict[str, Any] = dict(exc.errors()[0])
        key = ".".join(str(part) for part in first["loc"][:2])
        where = f"${origins[key]}" if origins and key in origins else source
        raise ConfigError(f"config error in {where}: {_describe(first, data)}") from None


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config, else $HITL_CONFIG, else ./config.toml if it exists, else None (defaults)."""
    if cli_path:
        return Path(cli_path)
    if environ.get("HITL_CONFIG"):
        return Path(environ["HITL_CONFIG"])
    default = Path("config.toml")
    return default if default.exists() else None


def _anchor_sqlite_path(data: dict[str, Any], folder: Path) -> None:
    """A relative SQLite path in the file means beside the file, whatever the working
    folder (``sqlite:///hitl.db`` in ``/etc/hitl/config.toml`` is ``/etc/hitl/hitl.db``).
    Paths from the environment or the command line stay relative to the working folder."""
    store = data.get("store")
    if not isinstance(store, dict) or not isinstance(store.get("url"), str):
        return
    url: str = store["url"]
    match = re.match(r"^(sqlite(?:\+\w+)?:///)([^?]*)(.*)$", url)
    if match is None or not match.group(2) or match.group(2) == ":memory:":
        return
    prefix, file, rest = match.groups()
    if Path(file).is_absolute():
        return
    store["url"] = f"{prefix}{(folder / file).resolve()}{rest}"


def load_settings(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    **overrides: dict[str, Any],
) -> Settings:
    """Read ``path`` (None: built-in defaults), apply env and explicit overrides, validate."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist (pass --config PATH or set HITL_CONFIG)"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error in {path}: not valid TOML ({exc})") from None
        _anchor_sqlite_path(data, path.parent)
    from_env, origins = _env_overrides(environ)
    for layer in (from_env, overrides):
        for section, values in layer.items():
            if not isinstance(data.get(section), dict):
                data[section] = {}
            data[section] = {**data[section], **values}
    return settings_from_mapping(data, source=source, origins=origins)
