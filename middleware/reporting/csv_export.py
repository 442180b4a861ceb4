"""The exchange table as CSV, for spreadsheets."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from feedback_store.report import CSV_COLUMNS

# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """A value as a literal cell: text a client or reviewer wrote never becomes a formula
    (it gains a leading apostrophe, as OWASP advises); numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def render_csv(table: Sequence[dict[str, Any]]) -> str:
    """One row per exchange, columns ``CSV_COLUMNS``; empty cells for unknown values."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: cell(row.get(k)) for k in CSV_COLUMNS})
    return out.getvalue()
