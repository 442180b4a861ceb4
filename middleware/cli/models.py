"""``hitl models``: the model versions with their figures; ``rollback VERSION``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from middleware.errors import ConfigError
from middleware.settings import Settings


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    models = add("models", cmd_models, "list the model versions, or roll back to one")
    models.add_argument("--json", action="store_true", help="one JSON object per version")
    action = models.add_subparsers(dest="models_command", metavar="ACTION")
    rollback = action.add_parser("rollback", help="make an earlier model version live again")
    rollback.add_argument("version", type=int, metavar="VERSION")
    rollback.add_argument("--by", metavar="NAME", help="who rolls back (default: the OS user)")
    # Also after the word ``rollback``. SUPPRESS: unless given here, the subcommand sets
    # nothing, so ``hitl models --config X rollback 1`` keeps X (argparse copies every
    # attribute a subparser sets, its defaults included, over the parent's).
    rollback.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $HITL_CONFIG, else ./config.toml, else built-in defaults)",
    )
    rollback.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="store URL (overrides [store] url)",
    )


def _row(version: Any, live: int) -> dict[str, Any]:
    settings = orjson.loads(version.settings_json)
    figures = orjson.loads(version.figures_json)
    mine = figures.get("candidate" if version.kind == "retrain" else "live") or {}
    return {
        "version": version.id,
        "live": version.id == live,
        "kind": version.kind,
        "created_at": version.created_at,
        "by": version.created_by,
        "model": settings.get("model"),
        "features_version": settings.get("features_version"),
        "fingerprint": version.fingerprint,
        "labels": version.labels,
        "roc_auc": mine.get("roc_auc"),
        "log_loss": mine.get("log_loss"),
        "caught": mine.get("caught"),
    }


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_models(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from feedback_store.report.metrics import iso
    from feedback_store.versions import ModelVersions
    from middleware.cli.report import _open_store, _require_database
    from middleware.cli.retrain import who
    from middleware.learning.retrain import rollback

    _require_database(settings)

    async def run() -> tuple[list[dict[str, Any]], str | None]:
        store = await _open_store(settings)
        try:
            note = None
            if args.models_command == "rollback":
                try:
                    generation = await rollback(store, args.version, by=who(args.by))
                except LookupError as exc:
                    raise ConfigError(str(exc)) from None
                note = f"model version {args.version} is live again (generation {generation})"
            snapshot = await store.latest_snapshot()
            live = snapshot.version if snapshot is not None else 1
            rows = [_row(v, live) for v in await ModelVersions(store).list()]
            if not rows and not args.json:
                print(
                    "one model so far (version 1, learned online); no retrain promoted yet"
                    if snapshot is not None
                    else "no model saved yet: the learner saves version 1 after the first"
                    " label, and `hitl retrain --promote` adds versions"
                )
            return rows, note
        finally:
            await store.close()

    rows, note = asyncio.run(run())
    if note:
        print(note)
    if args.json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    if not rows:
        return 0
    heads = (
        *("version", "live", "kind", "by", "model", "features_version", "labels"),
        *("roc_auc", "log_loss", "caught"),
    )
    print("  ".join(f"{h:>10}" for h in ("created", *heads)))
    for row in rows:
        cells = [str(iso(row["created_at"]))[:19], *(_cell(row[h]) for h in heads)]
        print("  ".join(f"{c:>10}" for c in cells))
    return 0
