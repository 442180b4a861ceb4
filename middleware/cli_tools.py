"""Subcommands beyond serve and db: each registers itself on the parser here."""

from __future__ import annotations

from collections.abc import Callable

from . import cli_replay, cli_report

REGISTER: list[Callable[..., None]] = [cli_replay.register, cli_report.register]
