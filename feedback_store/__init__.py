"""The truth: tables, transactions, queries. Imports nothing of the gateway's."""

from .errors import SchemaError, StoreError
from .models import Escalation, Event, Exchange, Feedback, KeyValue, Label, ModelSnapshot
from .schema import current_revision, ensure_schema, head_revision, upgrade
from .store import LabelRow, Store, VoteResult

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
