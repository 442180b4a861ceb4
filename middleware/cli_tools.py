"""Subcommands beyond serve and db: each registers itself on the parser here."""

from __future__ import annotations

from collections.abc import Callable

REGISTER: list[Callable[..., None]] = []
