"""The ``hitl`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from middleware.errors import HITLError
from middleware.settings import Settings, load_settings, resolve_config_path

Handler = Callable[[argparse.Namespace, Settings, Mapping[str, str]], int]


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """What the command line overrides in the config file."""
    overrides: dict[str, dict[str, Any]] = {}
    server: dict[str, Any] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if server:
        overrides["server"] = server
    if getattr(args, "store", None):
        overrides["store"] = {"url": args.store}
    return overrides


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return load_settings(resolve_config_path(args.config, environ), environ, **_overrides(args))


def configure_logging(settings: Settings) -> None:
    from middleware.logs import configure

    configure(settings.server.log_format)


def cmd_serve(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    import uvicorn

    from middleware.app import create_app

    configure_logging(settings)
    if args.workers < 1:
        print("hitl serve: --workers must be 1 or more", file=sys.stderr)
        return 2
    if (args.workers > 1 or args.no_learner) and _refuse_sqlite_fleet(settings, "hitl serve"):
        return 2
    _check_schema(settings)
    if args.workers > 1:
        from middleware.app.worker import FleetSpec
        from middleware.cli.fleet import serve_fleet

        path = resolve_config_path(args.config, environ)
        spec = FleetSpec(config=None if path is None else str(path), overrides=_overrides(args))
        return serve_fleet(
            settings,
            spec,
            uvicorn_config(
                "middleware.app.worker:worker_app", settings, factory=True, workers=args.workers
            ),
            learner=not args.no_learner,
        )
    app = create_app(settings, environ=environ, role="serve" if args.no_learner else "all")
    config = uvicorn_config(app, settings)
    server = uvicorn.Server(config)
    server.run()
    # uvicorn exits quietly when the lifespan fails; say why with our exit code.
    return 0 if server.started else 1


def cmd_learner(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    import asyncio

    from middleware.cli.fleet import run_learner

    configure_logging(settings)
    if _refuse_sqlite_fleet(settings, "hitl learner"):
        return 2
    _check_schema(settings)
    asyncio.run(run_learner(settings, environ))
    return 0


def _refuse_sqlite_fleet(settings: Settings, command: str) -> bool:
    """Several processes on one SQLite file would each hold a writer and a learner of
    their own: a fleet needs PostgreSQL. True (and says so) when refused."""
    from feedback_store.urls import is_sqlite

    if not is_sqlite(settings.store.url):
        return False
    print(
        f"{command}: several processes (--workers > 1, --no-learner, hitl learner) need "
        "PostgreSQL; SQLite serves one process, which learns itself. Set [store] url = "
        '"postgresql+psycopg://USER@HOST/DB" (see README, "Running a fleet"), or run '
        "`hitl serve` alone.",
        file=sys.stderr,
    )
    return True


def uvicorn_config(app: Any, settings: Settings, **extra: Any) -> Any:
    """uvicorn's settings for the gateway: one process's app, or a fleet's factory."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="auto",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # Our streams end themselves at the grace period; uvicorn only cuts what is left.
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_s) + 5,
        **server_options(settings),
        **extra,
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn is told of ``[server]``: whom to believe about the client, and its
    connection limits. uvicorn has no header-read timeout (a client may take forever to
    finish its headers); ``keep_alive_s`` closes idle connections between requests, and
    only its h11 parser caps the header size."""
    server = settings.server
    return {
        "http": server.http,
        # Off unless proxies are listed: uvicorn would otherwise believe X-Forwarded-For
        # from 127.0.0.1 (or $FORWARDED_ALLOW_IPS), so any local client could pick its
        # own address.
        "proxy_headers": bool(server.trusted_proxies),
        "forwarded_allow_ips": list(server.trusted_proxies),
        "timeout_keep_alive": server.keep_alive_s,
        "limit_concurrency": server.limit_concurrency or None,
        "h11_max_incomplete_event_size": server.max_header_bytes,
    }


def _check_schema(settings: Settings) -> None:
    """Create the schema on an empty database; refuse an outdated one before serving."""
    from sqlalchemy.exc import SQLAlchemyError

    from feedback_store import SchemaError, ensure_schema
    from feedback_store.schema import redact_url
    from middleware.errors import SchemaOutdated, StoreUnavailable

    try:
        ensure_schema(settings.store.url, config_hint=_config_hint(settings))
    except SchemaError as exc:
        raise SchemaOutdated(str(exc)) from None
    except SQLAlchemyError as exc:
        raise StoreUnavailable(
            f"cannot open the database {redact_url(settings.store.url)} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); check [store] url"
        ) from None


def _config_hint(settings: Settings) -> str:
    return settings.source if settings.source != "built-in defaults" else "config.toml"


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from feedback_store import SchemaError, current_revision, upgrade
    from feedback_store.schema import redact_url
    from middleware.errors import SchemaOutdated, StoreUnavailable

    where = redact_url(settings.store.url)
    try:
        before = current_revision(settings.store.url)
        after = upgrade(settings.store.url)
    except SchemaError as exc:
        raise SchemaOutdated(str(exc)) from None
    except SQLAlchemyError as exc:
        raise StoreUnavailable(
            f"cannot upgrade the database {where} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); check [store] url"
        ) from None
    if before == after:
        print(f"{where}: already at revision {after}")
    else:
        print(f"{where}: upgraded from {before or 'an empty database'} to revision {after}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hitl", description="hitl-gateway: a human-in-the-loop gateway for chat models"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--config",
            metavar="PATH",
            help="config file (default: $HITL_CONFIG, else ./config.toml, else built-in defaults)",
        )
        if name != "serve":
            p.add_argument("--store", metavar="URL", help="store URL (overrides [store] url)")
        p.set_defaults(handler=handler)
        return p

    serve = add("serve", cmd_serve, "run the gateway")
    serve.add_argument("--host", help="listen address (overrides [server] host)")
    serve.add_argument("--port", type=int, help="listen port (overrides [server] port)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serving processes on the port (default 1; more need PostgreSQL, and start a "
        "learner process beside them)",
    )
    serve.add_argument(
        "--no-learner",
        action="store_true",
        help="serve only; a `hitl learner` elsewhere learns (PostgreSQL only)",
    )
    add("learner", cmd_learner, "run the fleet's learner (PostgreSQL only)")

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="bring the database to the newest schema revision")
    upgrade.add_argument("--config", metavar="PATH", help="config file")
    upgrade.set_defaults(handler=cmd_db_upgrade)

    for register in _extensions():
        register(sub, add)
    return parser


def _extensions() -> list[Callable[..., None]]:
    """Subcommands that live in their own modules (replay, report, export...)."""
    from middleware.cli import models, purge, replay, report, retrain, reviews

    registers = [replay.register, report.register, purge.register, reviews.register]
    return [*registers, retrain.register, models.register]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args, environ)
        handler: Handler = args.handler
        return handler(args, settings, environ)
    except HITLError as exc:
        print(f"hitl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
