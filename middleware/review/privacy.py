"""Masking ``[privacy] redact`` patterns in what the gateway keeps and what leaves it.

The flows mask once, before anything is stored or logged: the exchange's question and
reply, the request's messages and metadata, feedback comments and corrections, and
reviewers' corrections. The Slack card masks again (text stored before a pattern was
configured). The client still receives the upstream's reply as it came: redaction is of
what the gateway keeps, not of what it relays.

A pattern that begins with the regex comment ``(?#luhn)`` masks a match only when its
digits pass the Luhn check: card numbers, and not order numbers of as many digits.

This runs on every reply, so it is built to cost little. A ``Redactor`` without
patterns is falsy and hands every text back untouched. Each pattern is compiled once,
and before it runs on a text the characters any of its matches needs are counted (an
``@``, so many digits: read from the pattern itself), which takes a few microseconds,
so a pattern runs only on a text that could hold a match. The patterns run one
after another rather than as one alternation: CPython's regex engine skips quickly
through a text only on a pattern's first literal or character set, which an alternation
loses (``bench/redaction.py``: several times slower on a 200-word reply).
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import reduce
from operator import and_
from typing import Any

#: a pattern that begins with this (a regex comment: it matches nothing) is Luhn-checked
LUHN = "(?#luhn)"
#: request keys the gateway keeps in their own columns, as sent (identifiers, not text)
_KEPT_AS_SENT = frozenset({"model", "user"})
#: the key under which a pattern's need of ASCII digits is counted
_DIGITS = "0-9"
_ASCII_DIGITS = "0123456789"
_DIGIT_BYTES = _ASCII_DIGITS.encode()


def luhn_valid(text: str) -> bool:
    """Whether the ASCII digits of ``text`` pass the Luhn checksum (card numbers do)."""
    digits = [ord(c) - 48 for c in text if "0" <= c <= "9"]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def needs(pattern: str) -> Counter[str]:
    """What any match of ``pattern`` needs in its text, at least: how many of some
    characters, and how many ASCII digits (under ``"0-9"``). A lower bound, so
    anything unclear counts as nothing; empty when the pattern cannot be read so."""
    try:
        sre = importlib.import_module("re._constants")
        parsed = importlib.import_module("re._parser").parse(pattern)
        return _floor(list(parsed), bool(parsed.state.flags & re.IGNORECASE), sre)
    except Exception:  # a private module that may change: no shortcut then, never wrong
        return Counter()


def _floor(items: list[tuple[Any, Any]], nocase: bool, sre: Any) -> Counter[str]:
    total: Counter[str] = Counter()
    looked: Counter[str] = Counter()  # what lookarounds need: in the text, maybe overlapping
    for op, av in items:
        if op is sre.LITERAL:
            char = chr(av)
            if not (nocase and char.lower() != char.upper()):
                total[char] += 1
            if char in _ASCII_DIGITS:
                total[_DIGITS] += 1
        elif op is sre.IN:
            if all(
                (kind is sre.LITERAL and 48 <= value <= 57)
                or (kind is sre.RANGE and value[0] >= 48 and value[1] <= 57)
                for kind, value in av
            ):
                total[_DIGITS] += 1
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, _high, body = av
            for key, n in _floor(list(body), nocase, sre).items():
                total[key] += n * low
        elif op is sre.SUBPATTERN:
            _group, add, remove, body = av
            inner = (nocase or bool(add & re.IGNORECASE)) and not remove & re.IGNORECASE
            total.update(_floor(list(body), inner, sre))
        elif op is sre.ATOMIC_GROUP:
            total.update(_floor(list(av), nocase, sre))
        elif op is sre.BRANCH:
            branches = [_floor(list(b), nocase, sre) for b in av[1]]
            total.update(reduce(and_, branches) if branches else Counter())
        elif op is sre.ASSERT:
            looked |= _floor(list(av[1]), nocase, sre)
    return total | looked


class Redactor:
    """Masks configured patterns (``[privacy] redact``) with ``mask``."""

    def __init__(self, patterns: Sequence[str], mask: str = "[redacted]") -> None:
        self.patterns = tuple(patterns)
        self.mask = mask
        # (compiled, Luhn-checked, what a match needs, what it needs of digits)
        self._steps: list[tuple[re.Pattern[str], bool, Counter[str], int]] = []
        for pattern in self.patterns:
            need = needs(pattern)
            digits = need.pop(_DIGITS, 0)
            if any(c in mask for c in need) or (digits and any(c in mask for c in _ASCII_DIGITS)):
                need, digits = Counter(), 0  # an earlier mask could supply them
            self._steps.append((re.compile(pattern), pattern.startswith(LUHN), need, digits))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"Redactor({len(self.patterns)} patterns)"

    def __call__(self, text: str) -> str:
        if not text or not self.patterns:
            return text
        digits = -1  # counted when a pattern first asks
        for pattern, checked, need, needs_digits in self._steps:
            if need and not all(
                (c in text) if n == 1 else text.count(c) >= n for c, n in need.items()
            ):
                continue
            if needs_digits:
                if digits < 0:  # bytes.translate deletes at memory speed; str.count doesn't
                    encoded = text.encode("utf-8", "surrogatepass")
                    digits = len(encoded) - len(encoded.translate(None, _DIGIT_BYTES))
                if digits < needs_digits:
                    continue
            text = pattern.sub(self._checked if checked else self._masked, text)
        return text

    def _masked(self, match: re.Match[str]) -> str:
        return self.mask

    def _checked(self, match: re.Match[str]) -> str:
        return self.mask if luhn_valid(match.group()) else match.group()

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
        return {k: v if k in _KEPT_AS_SENT else self.value(v) for k, v in payload.items()}
