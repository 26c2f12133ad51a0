"""The database statements of the hot paths, without HTTP: what each way of running them costs.

A private Postgres, the items schema, 200 rows; then, with 32 tasks on one event loop (as the
service has under ``wrk -c32``), the point read run three ways and the keyed create (look-up,
then one statement) two ways. Prints figures; asserts nothing.

    PYTHONPATH=infra/local:tests/load uv run --frozen python tests/load/statements.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal

import uvloop
from daemons import PostgresServer, find_postgres_bindir, postgres_os_user
from pydantic import SecretStr
from sqlalchemy import select

from regatta.common.data.db import Database, create_database, create_engine
from regatta.common.data.idempotency import IdempotencyStore, IdempotentRequest
from regatta.common.settings import ServiceSettings
from regatta.items.models import Item, idempotency_keys
from regatta.items.service import items

TASKS = 32
ROWS = 200


async def rate(name: str, operation: Callable[[int], Awaitable[object]], total: int) -> None:
    """Run ``operation`` ``total`` times from TASKS tasks; print operations/s and CPU each."""

    async def task(first: int) -> None:
        for n in range(first, total, TASKS):
            await operation(n % ROWS + 1)

    await asyncio.gather(*(task(n) for n in range(TASKS)))  # warm: statements prepared
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(task(n) for n in range(TASKS)))
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    print(f"{name:47} {total / elapsed:7.0f}/s  {used / total * 1e6:6.0f} µs CPU each")


async def measure(database_url: str) -> None:
    """Every figure, on databases sized as the service's: SQLAlchemy's engine, and asyncpg."""
    settings = ServiceSettings(database_url=SecretStr(database_url))
    through_sqlalchemy = Database(create_engine(settings))  # the executor SQLite uses
    on_asyncpg = create_database(settings)  # the executor Postgres uses
    table = Item.__table__
    repository = items.repository
    store = IdempotencyStore(idempotency_keys, ttl_seconds=86_400)
    values = {"name": "Bench", "description": None, "price": Decimal("9.99"), "tax": None}
    for _ in range(ROWS):
        await items._create_in_one_statement(on_asyncpg, store, None, values)

    async def built_per_call(row_id: int) -> object:
        async with through_sqlalchemy.engine.connect() as connection:
            return (await connection.execute(select(table).where(table.c.id == row_id))).first()

    def read(database: Database) -> Callable[[int], Awaitable[object]]:
        async def point_read(row_id: int) -> object:
            return await repository.read(database, row_id)

        return point_read

    def create(database: Database) -> Callable[[int], Awaitable[object]]:
        async def keyed_create(_: int) -> object:
            request = IdempotentRequest(key=uuid.uuid4().hex, scope="bench", fingerprint="f")
            return await items._create_in_one_statement(database, store, request, values)

        return keyed_create

    try:
        await rate("point read, Core select built per call", built_per_call, 4000)
        await rate("point read, SQLAlchemy's engine", read(through_sqlalchemy), 4000)
        await rate("point read, asyncpg and its pool", read(on_asyncpg), 4000)
        await rate("keyed create, SQLAlchemy's engine", create(through_sqlalchemy), 2000)
        await rate("keyed create, asyncpg and its pool", create(on_asyncpg), 2000)
    finally:
        await through_sqlalchemy.close()
        await on_asyncpg.close()


def main() -> int:
    """Start Postgres, create the schema, measure."""
    with PostgresServer(find_postgres_bindir(), postgres_os_user()) as postgres:
        postgres.start()
        url = postgres.url(postgres.create_database())
        env = {**os.environ, "DATABASE_URL": url}
        subprocess.run([sys.executable, "-m", "regatta.items.migrate"], env=env, check=True)
        print(f"{TASKS} tasks on one event loop (uvloop), Postgres {url.rsplit('@', 1)[1]}")
        uvloop.run(measure(url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
