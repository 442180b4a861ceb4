"""Numbers, shares, durations and labels as the report prints them ("n/a" when unknown)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(iso_text: str | None) -> str:
    """An ISO time as people read it: ``14 Nov 2023, 22:13 UTC`` ("n/a" when unknown)."""
    moment = _parsed(iso_text)
    return "n/a" if moment is None else f"{moment:%-d %b %Y, %H:%M} UTC"


def period(start: str | None, end: str | None) -> str:
    """``start`` to ``end`` as people read it, the day said once when it is one day."""
    first, last = _parsed(start), _parsed(end)
    if first is None or last is None:
        return f"{when(start)} to {when(end)}"
    if first.date() == last.date():
        # A replay or a test lasts seconds: minutes alone would say "22:13 to 22:13".
        clock = "%H:%M:%S" if (last - first).total_seconds() < 600 else "%H:%M"
        return f"{first:%-d %b %Y}, {first:{clock}} to {last:{clock}} UTC"
    return f"{when(start)} to {when(end)}"


def _parsed(iso_text: str | None) -> datetime | None:
    if not iso_text:
        return None
    try:
        moment = datetime.fromisoformat(iso_text)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
