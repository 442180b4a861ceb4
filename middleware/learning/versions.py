"""What a model was built with: the feature code's version and the model's settings.

Every brain carries the settings it was built with and their fingerprint, and every
snapshot records the fingerprint; a gateway whose settings differ from its snapshot's
says so at start and serves the snapshot (old weights are never fed new features
silently, and never rebuilt behind the engineer's back) until a retrain is promoted.
"""

from __future__ import annotations

import hashlib

import orjson

from middleware.scoring.features import FEATURES_VERSION

__all__ = ["built_with", "fingerprint", "mismatch"]

#: what snapshots from before model versions were built with (the feature code then)
LEGACY_FEATURES_VERSION = 1


def built_with(model_name: str, *, features_version: int = FEATURES_VERSION) -> dict[str, object]:
    """The settings that decide what a model learns from what: its fingerprint's source."""
    return {"features_version": features_version, "model": model_name}


def fingerprint(settings: dict[str, object]) -> str:
    """A short stable digest of ``settings`` (same settings, same fingerprint)."""
    canonical = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def describe(settings: dict[str, object]) -> str:
    return f"model {settings.get('model')}, features version {settings.get('features_version')}"


def mismatch(served: dict[str, object], configured: dict[str, object]) -> str | None:
    """The plain warning when the model served was built with other settings, else None."""
    if fingerprint(served) == fingerprint(configured):
        return None
    return (
        f"the newest model snapshot was built with {describe(served)}; this gateway is "
        f"configured with {describe(configured)}. Serving the snapshot's model unchanged "
        "(its own features and weights) until `hitl retrain --promote` rebuilds it with "
        "the new settings"
    )
