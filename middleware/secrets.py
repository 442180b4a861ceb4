"""The secrets the settings name: read from the environment, never from the file, and
never printed with the settings."""

from __future__ import annotations

from collections.abc import Mapping

from middleware.settings import Settings


class Secrets:
    """Values read from the environment variables the settings name.

    Kept apart from ``Settings`` so that no secret is ever printed with them.
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        def get(name: str) -> str | None:
            value = environ.get(name, "") if name else ""
            return value or None

        self.upstream_api_key = get(settings.upstream.api_key_env)
        keys = get(settings.server.client_keys_env)
        self.client_keys = (
            frozenset(k.strip() for k in keys.split(",") if k.strip()) if keys else None
        )
        self.token_secret = get(settings.server.token_secret_env)
        self.admin_token = get(settings.report.admin_token_env)
        self.reviewer_tokens = get(settings.review.reviewer_tokens_env)
        self.slack_bot_token = get(settings.slack.bot_token_env)
        self.slack_signing_secret = get(settings.slack.signing_secret_env)
        self.slack_app_token = get(settings.slack.app_token_env)

    def __repr__(self) -> str:
        return "Secrets(<hidden>)"
