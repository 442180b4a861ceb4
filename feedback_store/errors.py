"""The store's exceptions. The gateway maps them onto its own tree at its edge."""

from __future__ import annotations


class StoreError(Exception):
    """The database could not be reached or refused a write."""


class SchemaError(StoreError):
    """The database schema is not at the revision this code needs."""
