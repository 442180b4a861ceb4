"""Masking ``[privacy] redact`` patterns in what the gateway keeps and what leaves it.

The flows mask once, before anything is stored or logged: the exchange's question and
reply, the request's messages and metadata, feedback comments and corrections, and
reviewers' corrections. The Slack card masks again (text stored before a pattern was
configured). The client still receives the upstream's reply as it came: redaction is of
what the gateway keeps, not of what it relays.

The request path pays for this on every reply, so a ``Redactor`` with no patterns is
falsy and every method returns its input untouched, and the patterns are compiled once
into one alternation (tried in the configured order at each position). A pattern that
begins with the regex comment ``(?#luhn)`` masks a match only when its digits pass the
Luhn check: card numbers, and not order numbers of as many digits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: a pattern that begins with this (a regex comment: it matches nothing) is Luhn-checked
LUHN = "(?#luhn)"
#: numbered or named backreferences: such a pattern can't be renumbered into the
#: alternation, so it runs on its own after it
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")
#: global inline flags at a pattern's start, e.g. "(?i)": scoped inside the alternation
_GLOBAL_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")
#: request keys the gateway keeps in their own columns, as sent (identifiers, not text)
_KEPT_AS_SENT = frozenset({"model", "user"})


def luhn_valid(text: str) -> bool:
    """Whether the digits of ``text`` pass the Luhn checksum (card numbers do)."""
    digits = [ord(c) - 48 for c in text if "0" <= c <= "9"]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _scoped(pattern: str) -> str:
    """``pattern`` without global inline flags at its start: ``(?i)x`` as ``(?i:x)``."""
    found = _GLOBAL_FLAGS.match(pattern)
    if found is None:
        return pattern
    return f"(?{found.group(1)}:{pattern[found.end() :]})"


class Redactor:
    """Masks configured patterns (``[privacy] redact``) with ``mask``."""

    def __init__(self, patterns: Sequence[str], mask: str = "[redacted]") -> None:
        self.patterns = tuple(patterns)
        self.mask = mask
        compiled = [re.compile(p) for p in self.patterns]  # re.error names a bad one
        joined = [
            (f"_{i}", p) for i, p in enumerate(self.patterns) if not _BACKREF.search(p)
        ]
        self._luhn = frozenset(f"_{i}" for i, p in enumerate(self.patterns) if p.startswith(LUHN))
        self._combined: re.Pattern[str] | None = None
        if joined:
            try:
                self._combined = re.compile(
                    "|".join(f"(?P<{name}>{_scoped(p)})" for name, p in joined)
                )
            except re.error:  # e.g. the same group name in two patterns: one by one
                joined = []
        alone = {name for name, _ in joined}
        self._alone = [
            (c, f"_{i}" in self._luhn)
            for i, c in enumerate(compiled)
            if f"_{i}" not in alone
        ]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"Redactor({len(self.patterns)} patterns)"

    def _replace(self, match: re.Match[str]) -> str:
        if match.lastgroup in self._luhn and not luhn_valid(match.group()):
            return match.group()
        return self.mask

    def _replace_checked(self, match: re.Match[str]) -> str:
        return self.mask if luhn_valid(match.group()) else match.group()

    def __call__(self, text: str) -> str:
        if not text or not self.patterns:
            return text
        if self._combined is not None:
            text = self._combined.sub(self._replace if self._luhn else self._mask_all, text)
        for pattern, checked in self._alone:
            text = pattern.sub(self._replace_checked if checked else self._mask_all, text)
        return text

    def _mask_all(self, match: re.Match[str]) -> str:
        return self.mask

    def optional(self, text: str | None) -> str | None:
        """``text`` masked; None stays None."""
        return None if text is None else self(text)

    def value(self, value: Any) -> Any:
        """A JSON value with every string in it masked (keys stay as they are)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def request(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A chat request as the gateway keeps it: every string masked (messages, their
        parts and tool calls, metadata...) but the model and end-user names, which have
        columns of their own. A new dict: the request itself is left as it was."""
        if not self.patterns:
            return dict(payload)
        return {
            k: v if k in _KEPT_AS_SENT else self.value(v) for k, v in payload.items()
        }
