"""What custom plans cost: the search and the point read, prepared or not, interleaved.

The engine's connections run with ``plan_cache_mode=force_custom_plan`` (db.PLANNER_SETTINGS):
every run of a prepared statement is planned for its values. The other way to keep a search
from a generic plan is not to keep it prepared at all (SQLAlchemy's asyncpg statement cache
off: each statement is parsed and described anew, one more round trip). This runs both, and
the old setting (``auto``, prepared) for reference, on the items schema with ROWS rows seeded
by SQL: one task, statements one after another, the variants interleaved in ROUNDS rounds of
BATCH statements each, so that the shared machine's drift falls on all of them alike. Prints
the median time per statement of each variant; asserts nothing.

    PYTHONPATH=infra/local:tests/load uv run --frozen python tests/load/plan_cache.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from daemons import PostgresServer, find_postgres_bindir, postgres_os_user
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from regatta.common.data.db import PLANNER_SETTINGS, Database
from regatta.common.http.pagination import PageRequest
from regatta.items.repository import ItemRepository
from regatta.items.service import items

ROWS = int(os.environ.get("PLAN_CACHE_ROWS", "100000"))
ROUNDS = int(os.environ.get("PLAN_CACHE_ROUNDS", "10"))
BATCH = int(os.environ.get("PLAN_CACHE_BATCH", "100"))
SEARCHES = ("noun042", "green", "qqqzzz", "lamp1234")


def variant(url: str, *, mode: str, cache_size: int) -> Database:
    """An engine of one connection: the planner's cache mode and asyncpg's cache size given."""
    engine = create_async_engine(
        make_url(url).update_query_dict({"prepared_statement_cache_size": str(cache_size)}),
        pool_size=1,
        max_overflow=0,
        connect_args={"server_settings": {**PLANNER_SETTINGS, "plan_cache_mode": mode}},
    )
    return Database(engine)


async def measure(url: str) -> None:
    """Interleave the variants; print each one's median per statement."""
    variants = {
        "custom plans, prepared (now)": variant(url, mode="force_custom_plan", cache_size=100),
        "not kept prepared": variant(url, mode="auto", cache_size=0),
        "auto, prepared (before)": variant(url, mode="auto", cache_size=100),
    }
    page = PageRequest(limit=20, after=None)

    def search(database: Database) -> Callable[[int], Awaitable[object]]:
        async def run(n: int) -> object:
            where = ItemRepository.filters(
                q=SEARCHES[n % len(SEARCHES)], min_price=None, max_price=None, dialect="postgresql"
            )
            return await items.list(database=database, page=page, where=where)

        return run

    def point_read(database: Database) -> Callable[[int], Awaitable[object]]:
        async def run(n: int) -> object:
            return await items.repository.read(database, n % ROWS + 1)

        return run

    try:
        for name, operation in (("search", search), ("point read", point_read)):
            await interleave(name, {label: operation(db) for label, db in variants.items()})
    finally:
        for database in variants.values():
            await database.close()


async def interleave(name: str, runs: dict[str, Callable[[int], Awaitable[object]]]) -> None:
    """ROUNDS rounds of BATCH statements of each variant in turn; print the medians."""
    per_statement: dict[str, list[float]] = {label: [] for label in runs}
    for run in runs.values():  # warm: connections open, statements prepared
        for n in range(20):
            await run(n)
    for round_ in range(ROUNDS):
        for label, run in runs.items():
            started = time.perf_counter()
            for n in range(BATCH):
                await run(round_ * BATCH + n)
            per_statement[label].append((time.perf_counter() - started) / BATCH * 1e6)
    for label, times in per_statement.items():
        low, high = min(times), max(times)
        print(f"{name:11} {label:30} {statistics.median(times):7.0f} µs ({low:.0f}-{high:.0f})")


SEED = """
INSERT INTO items (name, price, version, created_at, updated_at)
SELECT a[1 + g % 10] || ' ' || 'noun' || lpad((1 + (g::bigint * 7919) % 150)::text, 3, '0')
       || ' lamp' || g, 1 + g % 100, 1, now(), now()
FROM generate_series(1, ROWS) g,
     (SELECT ARRAY['red','blue','green','small','large','old','new','bright','dark','warm'] AS a) v
"""


def main() -> int:
    """Start Postgres, create and seed the schema, measure."""
    with PostgresServer(find_postgres_bindir(), postgres_os_user()) as postgres:
        postgres.start()
        database = postgres.create_database()
        url = postgres.url(database)
        env = {**os.environ, "DATABASE_URL": url}
        subprocess.run([sys.executable, "-m", "regatta.items.migrate"], env=env, check=True)
        postgres.psql(SEED.replace("ROWS", str(ROWS)), database=database)
        postgres.psql("VACUUM ANALYZE", database=database)
        print(f"{ROWS} items; {ROUNDS} rounds of {BATCH} statements per variant, interleaved")
        asyncio.run(measure(url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
