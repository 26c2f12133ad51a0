"""The connections lent to the hot statements: reused, bounded, replaced when bad, returned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import event, func, select, text
from sqlalchemy import exc as sa_exc

from regatta.common.data import db, lending
from regatta.common.data.errors import IdempotencyKeyInFlightError
from regatta.common.settings import Environment, ServiceSettings
from regatta.common.telemetry.observability import PlatformMetrics
from tests.servers import Terminate

pytestmark = pytest.mark.postgres

PID = select(func.pg_backend_pid().label("pid"))


def sleeping(seconds: float) -> Any:
    """A read that holds its connection for ``seconds``."""
    return select(func.pg_backend_pid().label("pid"), func.pg_sleep(seconds).label("slept"))


def database_of(postgres_url: str, *, pool: int = 4, timeout: float = 5.0) -> db.Database:
    """The service's database with a pool of ``pool`` (so a lender of ``pool // 2``)."""
    settings = ServiceSettings(
        environment=Environment.TEST,
        database_url=SecretStr(postgres_url),
        db_pool_size=pool,
        db_pool_timeout_seconds=timeout,
    )
    return db.Database(db.create_engine(settings))


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[db.Database]:
    database = database_of(postgres_url)
    try:
        yield database
    finally:
        await database.close()


def checkouts(database: db.Database) -> list[int]:
    """A list that grows by one at every checkout from the pool."""
    seen: list[int] = []
    event.listen(database.engine.sync_engine.pool, "checkout", lambda *_: seen.append(1))
    return seen


async def pid(database: db.Database) -> int:
    return int((await database.read_direct(PID, {}))[0]["pid"])


async def test_reads_reuse_the_lent_connections_and_never_more_than_half_the_pool(
    database: db.Database,
) -> None:
    assert database.lender is not None
    assert database.lender.size == 2
    seen = checkouts(database)
    rows = await asyncio.gather(*(database.read_direct(sleeping(0.02), {}) for _ in range(12)))
    assert len({row[0]["pid"] for row in rows}) == 2  # twelve reads, two connections
    assert len(seen) == 2
    assert database.lender.open == 2
    for _ in range(20):
        await pid(database)
    assert len(seen) == 2  # kept between reads: no checkout each
    assert database.engine.sync_engine.pool.checkedout() == 2  # type: ignore[attr-defined]


async def test_the_rest_of_the_pool_serves_everything_else_while_the_lender_is_busy(
    database: db.Database,
) -> None:
    busy = [asyncio.create_task(database.read_direct(sleeping(0.5), {})) for _ in range(4)]
    await asyncio.sleep(0.1)  # two reads running, two waiting for them
    async with asyncio.timeout(0.3), database.engine.connect() as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
    await asyncio.gather(*busy)


@pytest.mark.parametrize("seen", [True, False], ids=["seen-closed", "found-by-the-read"])
async def test_a_kept_connection_that_broke_is_replaced_and_the_read_succeeds(
    database: db.Database,
    terminate_backend: Terminate,
    monkeypatch: pytest.MonkeyPatch,
    seen: bool,
) -> None:
    first = await pid(database)
    await terminate_backend(first)
    await asyncio.sleep(0.2)  # the server's goodbye reaches the socket
    if not seen:  # as when the read comes first: the lender cannot tell, the read meets it
        monkeypatch.setattr(lending, "_closed", lambda _: False)
    second = await pid(database)  # no error: the cut one is not lent, or the read runs again
    monkeypatch.undo()
    assert second != first
    assert database.lender is not None
    # Not lent: replaced inside the lender. Lent: returned, and the read ran on a checkout.
    assert database.lender.open == (1 if seen else 0)
    assert await pid(database) == await pid(database)
    assert database.lender.open == 1
    assert database.engine.sync_engine.pool.checkedout() == 1  # type: ignore[attr-defined]


async def test_a_create_never_meets_a_kept_connection_the_server_closed(
    database: db.Database, terminate_backend: Terminate
) -> None:
    first = await pid(database)
    await terminate_backend(first)
    await asyncio.sleep(0.2)  # the server's goodbye reaches the socket
    async with database.lend() as connection:  # a write would not be run twice: never tried
        rows = await db.fetch_direct(connection, "SELECT pg_backend_pid() AS pid", replay=False)
    assert rows[0]["pid"] != first


def test_only_a_cut_connection_is_worth_a_second_read() -> None:
    closed = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    assert db._cut(sa_exc.DBAPIError("SELECT 1", None, closed))
    assert db._cut(ConnectionResetError())
    assert db._cut(asyncpg.exceptions.InterfaceError("connection is closed"))
    assert not db._cut(TimeoutError())
    assert not db._cut(asyncpg.exceptions.QueryCanceledError("canceling statement"))
    assert not db._cut(sa_exc.DBAPIError("SELECT 1/0", None, ZeroDivisionError()))


async def test_an_invalidation_in_the_pool_returns_every_kept_connection(
    database: db.Database,
) -> None:
    assert database.lender is not None
    await asyncio.gather(*(database.read_direct(sleeping(0.02), {}) for _ in range(4)))
    assert database.lender.idle == 2
    lent = await database.lender.acquire()
    async with database.engine.connect() as other:
        await other.invalidate()  # what a disconnect does, for the pool's older connections
    assert database.lender.idle == 0
    await database.lender.release(lent, reuse=True)  # lent before it: not kept either
    assert database.lender.idle == 0
    await asyncio.sleep(0.05)
    assert database.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await pid(database)


async def test_a_client_error_keeps_the_connection(database: db.Database) -> None:
    assert database.lender is not None
    with pytest.raises(IdempotencyKeyInFlightError):
        async with database.lend():
            raise IdempotencyKeyInFlightError
    assert database.lender.idle == 1


async def test_tracing_turns_the_lender_off(database: db.Database) -> None:
    database.direct = False
    assert database.lender is None


async def test_a_read_that_fails_for_itself_is_not_run_again(
    postgres_url: str,
) -> None:
    database = database_of(postgres_url)
    seen = checkouts(database)
    try:
        await pid(database)
        with pytest.raises(sa_exc.DBAPIError, match="division by zero"):
            await database.read_direct(select(func.pg_sleep(0).label("s"), text("1/0")), {})
        assert len(seen) == 1  # a kept connection, not broken by the failure: not run again
        assert database.lender is not None
        assert database.lender.open == 0  # the failed connection went back to the pool
    finally:
        await database.close()


@pytest.mark.parametrize("limit", ["IDLE_SECONDS", "KEEP_SECONDS"])
async def test_connections_idle_or_kept_too_long_go_back_to_the_pool(
    database: db.Database, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    seen = checkouts(database)
    await pid(database)
    await pid(database)
    assert len(seen) == 1
    monkeypatch.setattr(lending, limit, 0.0)
    await pid(database)
    await pid(database)
    assert len(seen) == 3  # each one went back (recycled, or discarded) and another came out
    await asyncio.sleep(0.05)  # the stale one's check-in runs in the background
    assert database.lender is not None
    assert database.lender.open == 1
    assert database.engine.sync_engine.pool.checkedout() == 1  # type: ignore[attr-defined]


async def test_waiting_longer_than_the_pool_timeout_is_unavailable(postgres_url: str) -> None:
    database = database_of(postgres_url, pool=2, timeout=0.2)
    try:
        async with database.lend():
            with pytest.raises(sa_exc.TimeoutError, match="no connection was free"):
                await pid(database)
        await pid(database)
    finally:
        await database.close()


async def test_a_read_cancelled_mid_statement_does_not_hand_its_connection_on(
    database: db.Database,
) -> None:
    assert database.lender is not None
    read = asyncio.create_task(database.read_direct(sleeping(5), {}))
    await asyncio.sleep(0.2)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    assert database.lender.open == 0
    assert database.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await pid(database)


async def test_close_returns_every_connection(postgres_url: str) -> None:
    database = database_of(postgres_url)
    pool = database.engine.sync_engine.pool
    await asyncio.gather(*(database.read_direct(sleeping(0.02), {}) for _ in range(4)))
    assert pool.checkedout() == 2  # type: ignore[attr-defined]
    assert database.lender is not None
    await database.lender.close()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    await database.close()


async def test_sqlite_and_a_pool_of_one_lend_nothing(postgres_url: str, tmp_path: Any) -> None:
    for url in (f"sqlite+aiosqlite:///{tmp_path}/x.db", postgres_url):
        settings = ServiceSettings(
            environment=Environment.TEST, database_url=SecretStr(url), db_pool_size=1
        )
        database = db.Database(db.create_engine(settings))
        assert database.lender is None
        async with database.lend() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
        await database.close()


async def test_kept_connections_do_not_count_as_in_use(database: db.Database) -> None:
    registry = CollectorRegistry()
    metrics = PlatformMetrics(service_name="items", registry=registry)

    def in_use() -> float | None:
        return registry.get_sample_value("regatta_db_pool_checked_out", {"service_name": "items"})

    await asyncio.gather(*(database.read_direct(sleeping(0.02), {}) for _ in range(4)))
    metrics.sample_pool(database)
    assert in_use() == 0  # two kept, none in use
    async with database.lend():
        metrics.sample_pool(database)
        assert in_use() == 1


@pytest.mark.parametrize("reuse", [True, False], ids=["a-connection", "a-wake-up"])
async def test_a_waiter_cancelled_with_a_hand_over_passes_it_on(
    postgres_url: str, reuse: bool
) -> None:
    database = database_of(postgres_url, pool=2)
    lender = database.lender
    assert lender is not None
    try:
        held = await lender.acquire()
        first = asyncio.create_task(lender.acquire())
        second = asyncio.create_task(lender.acquire())
        await asyncio.sleep(0.05)  # both waiting, in order
        # Handed to the first waiter: the connection itself, or word that a place is free...
        await lender.release(held, reuse=reuse)
        first.cancel()  # ...which is cancelled before it could act on it
        with pytest.raises(asyncio.CancelledError):
            await first
        passed = await asyncio.wait_for(second, 1)  # the second got it in its place
        if reuse:
            assert passed.connection is held.connection
        else:
            assert not passed.reused  # it opened a connection of its own
        assert lender.open == 1
        await lender.release(passed, reuse=True)
    finally:
        await database.close()
