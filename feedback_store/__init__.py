"""The truth: tables, transactions, queries. Imports nothing of the gateway's."""

from feedback_store.errors import SchemaError, StoreError
from feedback_store.schema import current_revision, ensure_schema, head_revision, upgrade
from feedback_store.store import LabelRow, Store, VoteResult
from feedback_store.tables import (
    Escalation,
    Event,
    Exchange,
    Feedback,
    KeyValue,
    Label,
    ModelSnapshot,
)

__all__ = [
    "Escalation",
    "Event",
    "Exchange",
    "Feedback",
    "KeyValue",
    "Label",
    "LabelRow",
    "ModelSnapshot",
    "SchemaError",
    "Store",
    "StoreError",
    "VoteResult",
    "current_revision",
    "ensure_schema",
    "head_revision",
    "upgrade",
]
