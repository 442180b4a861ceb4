"""``hitl report`` and ``hitl export``: the engineers' view of the store, from a shell.

Both read the store the configuration names (or ``--store URL``) and write a file, or
standard output when there is no ``--out``. Heavy imports (matplotlib, scikit-learn)
happen inside the commands, so ``hitl --help`` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from middleware.errors import ConfigError, SchemaOutdated, StoreUnavailable
from middleware.settings import Settings

FORMATS = ("html", "json", "csv")


def _when(now: float, option: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        from feedback_store.report import parse_when

        try:
            return parse_when(text, now=now)
        except ValueError as exc:
            # One line, exit 2, as argparse does for its own errors (without the usage).
            print(f"hitl: {option}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return parse


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    now = time.time()
    report = add(
        "report",
        cmd_report,
        "the feedback report: HTML with charts for people, JSON or CSV for machines",
    )
    report.add_argument(
        "--format",
        choices=FORMATS,
        help="html, json or csv (default: from --out's extension, else html)",
    )
    report.add_argument("--out", metavar="PATH", help="write here (default: standard output)")
    _period_arguments(report, now)

    export = add(
        "export",
        cmd_export,
        "labelled exchanges as JSONL; with --corrections, corrected answers for fine-tuning; "
        "with --audit, the review audit",
    )
    export.add_argument(
        "--corrections",
        action="store_true",
        help="reviewer corrections in the OpenAI fine-tuning chat format",
    )
    export.add_argument(
        "--user-corrections",
        action="store_true",
        help="with --corrections: also end users' corrections (unvetted: anyone holding a "
        "reply's token can send one)",
    )
    export.add_argument(
        "--audit",
        action="store_true",
        help="one record per reviewed reply: its votes, decision and hold release (no text)",
    )
    export.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    _period_arguments(export, now)


def _period_arguments(parser: argparse.ArgumentParser, now: float) -> None:
    parser.add_argument(
        "--since",
        metavar="DATE",
        type=_when(now, "--since"),
        help="from this time on (2024-05-01, 2024-05-01T12:00, or 7d / 12h ago; UTC)",
    )
    parser.add_argument(
        "--until", metavar="DATE", type=_when(now, "--until"), help="before this time (same forms)"
    )


def report_format(requested: str | None, out: str | None) -> str:
    if requested:
        return requested
    suffix = Path(out).suffix.lower().lstrip(".") if out else ""
    return suffix if suffix in FORMATS else "html"


def _require_database(settings: Settings) -> None:
    """Refuse to report on a SQLite file that isn't there (opening it would create it)."""
    from feedback_store.urls import is_sqlite

    url = settings.store.url
    if is_sqlite(url):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).exists():
            raise StoreUnavailable(
                f"no database at {path}: serve some traffic first (hitl serve), or point "
                "[store] url (or --store) at the gateway's database"
            )


async def _open_store(settings: Settings) -> Any:
    from feedback_store import SchemaError, Store, StoreError

    store = Store(settings.store.url)
    try:
        await store.start()
    except SchemaError as exc:
        raise SchemaOutdated(str(exc)) from exc
    except StoreError as exc:  # it names the database (without its password) and what to do
        raise StoreUnavailable(str(exc)) from exc
    return store


def _output(out: str | None) -> tuple[TextIO, bool]:
    if out is None or out == "-":
        return sys.stdout, False
    try:
        return open(out, "w", encoding="utf-8", newline=""), True
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}") from None


def cmd_report(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from feedback_store.report import build_report, exchange_table, load_rows
    from middleware.reporting import render_csv, render_html

    fmt = report_format(args.format, args.out)
    _require_database(settings)

    async def read() -> Any:
        store = await _open_store(settings)
        try:
            return await load_rows(store, since=args.since, until=args.until)
        finally:
            await store.close()

    rows = asyncio.run(read())
    if fmt == "csv":
        text = render_csv(exchange_table(rows))
    else:
        report = build_report(
            rows,
            since=args.since,
            until=args.until,
            window=settings.learner.rolling_window,
            now=time.time(),
        )
        text = render_html(report) if fmt == "html" else json.dumps(report, indent=2) + "\n"
    stream, owned = _output(args.out)
    try:
        stream.write(text)
    finally:
        if owned:
            stream.close()
    if args.out and args.out != "-":
        print(f"hitl report: wrote {fmt.upper()} for {len(rows.exchanges)} exchanges to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from feedback_store.export import audit_records, corrections, labelled_exchanges

    if args.user_corrections and not args.corrections:
        raise ConfigError("--user-corrections only makes sense with --corrections")
    if args.audit and args.corrections:
        raise ConfigError("--audit and --corrections are two exports: choose one")
    _require_database(settings)

    def records(store: Any) -> AsyncIterator[dict[str, Any]]:
        if args.audit:
            return audit_records(store, since=args.since, until=args.until)
        if args.corrections:
            return corrections(
                store, include_users=args.user_corrections, since=args.since, until=args.until
            )
        return labelled_exchanges(store, since=args.since, until=args.until)

    async def run(stream: TextIO) -> int:
        store = await _open_store(settings)
        written = 0
        lines: list[str] = []
        try:
            async for record in records(store):
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
                if len(lines) >= 500:
                    await asyncio.to_thread(stream.writelines, lines)
                    lines = []
            await asyncio.to_thread(stream.writelines, lines)
        finally:
            await store.close()
        return written

    stream, owned = _output(args.out)
    try:
        written = asyncio.run(run(stream))
    finally:
        if owned:
            stream.close()
    if args.out and args.out != "-":
        what = (
            "audit records"
            if args.audit
            else "corrected answers"
            if args.corrections
            else "labelled exchanges"
        )
        print(f"hitl export: wrote {written} {what} to {args.out}")
    return 0
