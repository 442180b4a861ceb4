"""Masking configured patterns (``[privacy] redact``) in text that leaves the gateway."""

from __future__ import annotations

import re
from collections.abc import Sequence


class Redactor:
    """Masks configured patterns (``[privacy] redact``) in text that leaves the gateway."""

    def __init__(self, patterns: Sequence[str], mask: str = "[redacted]") -> None:
        self._patterns = [re.compile(p) for p in patterns]
        self.mask = mask

    def __call__(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.sub(self.mask, text)
        return text

    def __bool__(self) -> bool:
        return bool(self._patterns)
