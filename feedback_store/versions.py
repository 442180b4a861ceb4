"""Model versions: every model that went live, and the switch of the live one.

A model goes live by a snapshot of a newer generation (``modelsnapshot.generation``):
the learner, wherever it runs, adopts it, and every serving process follows the newest
generation. ``model_version`` keeps each model that went live, with the settings it was
built with and the figures that promoted it, so ``hitl models rollback`` can make it
live again: its ``blob`` is the model as it was when it last stopped being live.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import Connection, func, insert, select, update

from feedback_store.rows import ModelVersionRow
from feedback_store.tables import event_t, model_version_t, snapshot_t

if TYPE_CHECKING:
    from feedback_store.engine import Store

__all__ = ["Going", "ModelVersions", "Retired"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Retired:
    """The live model's state as it stops being live (kept for a rollback)."""

    version: int
    kind: str
    fingerprint: str
    settings_json: str
    last_label_id: int
    labels: int
    blob: bytes
    figures_json: str = "{}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Going:
    """A model going live: a new version (``version`` None), or an earlier one again."""

    blob: bytes
    last_label_id: int
    labels: int
    fingerprint: str
    settings_json: str
    figures_json: str
    by: str
    kind: str  # retrain | online
    event: str  # promotion | rollback
    version: int | None = None


_LISTED = [c for c in model_version_t.c if c.name != "blob"]


def _keep(conn: Connection, retired: Retired, at: float) -> None:
    """Store the retiring model under its version (the first online model has no row yet)."""
    values = {
        "blob": retired.blob,
        "last_label_id": retired.last_label_id,
        "labels": retired.labels,
        "fingerprint": retired.fingerprint,
        "settings_json": retired.settings_json,
    }
    found = conn.execute(
        select(model_version_t.c.id).where(model_version_t.c.id == retired.version)
    ).first()
    if found is not None and not retired.blob:
        return  # nothing to keep: never overwrite a kept model with none
    if found is not None:
        conn.execute(
            update(model_version_t).where(model_version_t.c.id == retired.version).values(values)
        )
        return
    conn.execute(
        insert(model_version_t).values(
            id=retired.version,
            created_at=at,
            kind=retired.kind,
            figures_json=retired.figures_json,
            created_by="",
            **values,
        )
    )


def _go_live(conn: Connection, going: Going, retired: Retired | None, at: float) -> tuple[int, int]:
    if retired is not None:
        _keep(conn, retired, at)
    version = going.version
    if version is None:
        # Ids are handed out here, not by a sequence: the first online version is
        # inserted with its own id, which a PostgreSQL sequence would not know of.
        newest = conn.execute(select(func.max(model_version_t.c.id))).scalar() or 0
        version = max(newest, retired.version if retired else 1) + 1
        conn.execute(
            insert(model_version_t).values(
                id=version,
                created_at=at,
                kind=going.kind,
                fingerprint=going.fingerprint,
                settings_json=going.settings_json,
                figures_json=going.figures_json,
                created_by=going.by,
                last_label_id=going.last_label_id,
                labels=going.labels,
                blob=going.blob,
            )
        )
    generation = (conn.execute(select(func.max(snapshot_t.c.generation))).scalar() or 0) + 1
    conn.execute(
        insert(snapshot_t).values(
            created_at=at,
            last_label_id=going.last_label_id,
            labels=going.labels,
            blob=going.blob,
            generation=generation,
            version=version,
            fingerprint=going.fingerprint,
        )
    )
    data = {
        "version": version,
        "generation": generation,
        "by": going.by,
        "labels": going.labels,
        "figures": orjson.loads(going.figures_json),
        "from_version": retired.version if retired else None,
    }
    conn.execute(
        insert(event_t).values(
            created_at=at, kind=going.event, data_json=orjson.dumps(data).decode()
        )
    )
    return version, generation


class ModelVersions:
    """The model versions of one store (async, on the store's reader and writer)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def list(self) -> list[ModelVersionRow]:
        """Every version, oldest first, without its model."""

        def run(conn: Connection) -> list[ModelVersionRow]:
            rows = conn.execute(select(*_LISTED).order_by(model_version_t.c.id)).all()
            return [ModelVersionRow.from_row(row) for row in rows]

        return await self.store.read(run)

    async def get(self, version: int) -> ModelVersionRow | None:
        def run(conn: Connection) -> ModelVersionRow | None:
            query = select(model_version_t).where(model_version_t.c.id == version)
            row = conn.execute(query).first()
            return None if row is None else ModelVersionRow.from_row(row)

        return await self.store.read(run)

    async def go_live(self, going: Going, retired: Retired | None) -> tuple[int, int]:
        """Make ``going`` live (one transaction, with its event); (version, generation)."""
        at = time.time()
        return await self.store.write(lambda conn: _go_live(conn, going, retired, at))

    async def keep(self, retired: Retired) -> None:
        """The learner's exact state of a model another one replaced (for a rollback)."""
        at = time.time()
        await self.store.write(lambda conn: _keep(conn, retired, at))

    async def live_generation(self) -> int:
        def run(conn: Connection) -> int:
            return int(conn.execute(select(func.max(snapshot_t.c.generation))).scalar() or 0)

        return await self.store.read(run)
