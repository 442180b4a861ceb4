"""What one claim on the fleet's shared counters costs the request that makes it.

A reply pays one claim when its decision escalates (a slot of the hourly cap) or asks
(one of the user's asks), and each vote one (its client's minute); every other reply
pays nothing. This times ``take`` through the backends the gateway uses: this process's
memory (SQLite), Redis (limits' moving window) and PostgreSQL (``feedback_store.quotas``,
a database of its own, dropped afterwards), the remote ones behind the same guard as in
the gateway. One take at a time, after a warm-up; median and p99 in microseconds.

    python bench/quotas.py [--takes 3000] [--redis URL] [--postgres SERVER_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

from feedback_store import Store
from middleware.quotas import Guarded, MemoryQuotas, Quotas, StoreQuotas
from middleware.quotas.redis import RedisQuotas


async def timed(quotas: Quotas, takes: int) -> tuple[float, float]:
    """(median, p99) µs of one take, over ``takes`` (50 keys, a limit never reached)."""
    for i in range(100):  # connections opened, statements prepared
        await quotas.take("bench", f"warm-{i % 5}", limit=10**9, window_s=60)
    times = []
    for i in range(takes):
        started = time.perf_counter()
        await quotas.take("bench", f"key-{i % 50}", limit=10**9, window_s=60)
        times.append((time.perf_counter() - started) * 1e6)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


async def on_postgres(server: str, run: Callable[[Quotas], Awaitable[None]]) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server)
    name = f"hitl_bench_{secrets.token_hex(4)}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        store = Store(url.set(database=name).render_as_string(hide_password=False))
        await store.start()
        try:
            await run(Guarded(StoreQuotas(store), where="PostgreSQL"))
        finally:
            await store.close()
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def main(args: argparse.Namespace) -> None:
    print("| backend | median µs | p99 µs |\n| --- | --- | --- |")

    async def report(label: str, quotas: Quotas) -> None:
        median, p99 = await timed(quotas, args.takes)
        print(f"| {label} | {median:,.1f} | {p99:,.1f} |")

    await report("memory (SQLite: one process)", MemoryQuotas())
    redis = RedisQuotas(args.redis, prefix=f"hitl-bench-{secrets.token_hex(4)}")
    try:
        await report("Redis", Guarded(redis, where=redis.where))
    finally:
        await redis.aclose()
    await on_postgres(args.postgres, lambda quotas: report("PostgreSQL", quotas))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=3000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    asyncio.run(main(parser.parse_args()))
