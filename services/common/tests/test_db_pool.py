"""Pooled connections the database dropped or timed out, through SQLAlchemy and fetch_direct."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import (
    JSON,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from regatta.common.data import db
from regatta.common.data.columns import Money, UTCDateTime
from regatta.common.settings import Environment, ServiceSettings
from tests.servers import Terminate

pytestmark = pytest.mark.postgres


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


def one_connection_engine(postgres_url: str, **settings: Any) -> AsyncEngine:
    """The service's engine with a pool of one (and any other settings given)."""
    return db.create_engine(
        ServiceSettings(
            environment=Environment.TEST,
            database_url=SecretStr(postgres_url),
            db_pool_size=1,
            **settings,
        )
    )


@pytest.fixture
def engine(postgres_url: str) -> AsyncEngine:
    return one_connection_engine(postgres_url)


async def test_an_idle_connection_is_pinged_and_replaced(
    engine: AsyncEngine, terminate_backend: Terminate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    try:
        first = await backend_pid(engine)
        await terminate_backend(first)
        second = await backend_pid(engine)  # no error: the ping found it dead
        assert second != first
    finally:
        await engine.dispose()


async def test_a_busy_connection_fails_once_as_unavailable_then_recovers(
    engine: AsyncEngine, terminate_backend: Terminate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
    try:
        first = await backend_pid(engine)
        await terminate_backend(first)
        with pytest.raises(db.DatabaseUnavailableError):
            await backend_pid(engine)  # not pinged: the statement meets the dropped connection
        second = await backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()


# fetch_direct: reads run by asyncpg itself meet the same failures with the same outcomes.


async def direct_backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        rows = await db.fetch_direct(connection, "SELECT pg_backend_pid() AS pid")
    return int(rows[0]["pid"])


async def test_a_direct_read_returns_its_rows_as_dicts(engine: AsyncEngine) -> None:
    try:
        async with engine.connect() as connection:
            rows = await db.fetch_direct(
                connection, "SELECT n, n * $1::int AS twice FROM generate_series(1, 3) AS n", 2
            )
            assert rows == [{"n": 1, "twice": 2}, {"n": 2, "twice": 4}, {"n": 3, "twice": 6}]
            assert await db.fetch_direct(connection, "SELECT 1 WHERE false") == []
    finally:
        await engine.dispose()


async def test_a_direct_read_on_a_dropped_connection_fails_once_then_recovers(
    engine: AsyncEngine, terminate_backend: Terminate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
    try:
        first = await direct_backend_pid(engine)
        await terminate_backend(first)
        with pytest.raises(db.DatabaseUnavailableError) as raised:
            await direct_backend_pid(engine)  # replayed through SQLAlchemy, which classifies it
        assert raised.value.connection_invalidated
        second = await direct_backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()


async def test_a_direct_read_past_the_statement_timeout_is_unavailable(
    postgres_url: str,
) -> None:
    engine = one_connection_engine(postgres_url, db_statement_timeout_ms=50)
    try:
        async with engine.connect() as connection:
            with pytest.raises(db.DatabaseUnavailableError):
                await db.fetch_direct(connection, "SELECT pg_sleep(1)")
            # The statement was cancelled, the connection is fine.
            assert await db.fetch_direct(connection, "SELECT 1 AS one") == [{"one": 1}]
    finally:
        await engine.dispose()


async def test_a_faulty_direct_read_is_the_same_error_as_through_sqlalchemy(
    engine: AsyncEngine,
) -> None:
    try:
        async with engine.connect() as connection:
            with pytest.raises(sa_exc.ProgrammingError) as raised:
                await db.fetch_direct(connection, "SELECT * FROM no_such_table")
            assert not isinstance(raised.value, db.DatabaseUnavailableError)
    finally:
        await engine.dispose()


async def test_a_direct_statement_converts_as_sqlalchemy_does(engine: AsyncEngine) -> None:
    # Bind and result processors of the column types apply: JSON both ways, a TypeDecorator
    # (UTC datetimes), money, bytes, and a literal the statement carries itself.
    money = Money(12, 2)
    statement = select(
        bindparam("document", type_=JSON).label("document"),
        bindparam("at", type_=UTCDateTime).label("at"),
        bindparam("price", type_=money).label("price"),
        bindparam("blob", type_=LargeBinary).label("blob"),
        literal("fixed").label("fixed"),
        bindparam("missing", type_=Text).label("missing"),
    )
    parameters = {
        "document": {"a": [1, "ü", None]},
        "at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
        "price": Decimal("12.50"),
        "blob": b"\x00\xff",
        "missing": None,
    }
    try:
        async with engine.connect() as connection:
            expected = dict((await connection.execute(statement, parameters)).one()._mapping)
            direct = await db.execute_direct(connection, statement, parameters)
        assert direct == [expected]
        assert expected["document"] == {"a": [1, "ü", None]}
        assert expected["at"] == parameters["at"]
        assert expected["at"].tzinfo is UTC
        with pytest.raises(sa_exc.StatementError):
            async with engine.connect() as connection:  # a naive datetime is refused, as always
                await db.execute_direct(connection, statement, {**parameters, "at": datetime.now()})  # noqa: DTZ005
    finally:
        await engine.dispose()


async def test_a_direct_write_on_an_autocommit_connection_is_committed_once(
    engine: AsyncEngine,
) -> None:
    notes = Table("direct_notes", MetaData(), Column("id", Integer, primary_key=True))
    insert_once = select(func.count()).select_from(
        insert(notes).values(id=bindparam("id")).returning(notes.c.id).cte("written")
    )
    try:
        async with engine.begin() as connection:
            await connection.run_sync(notes.metadata.create_all)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        async with autocommit.connect() as connection:
            assert await db.execute_direct(connection, insert_once, {"id": 1}) == [{"count_1": 1}]
            # A failing write is SQLAlchemy's own error, and leaves nothing behind.
            with pytest.raises(sa_exc.IntegrityError):
                await db.execute_direct(connection, insert_once, {"id": 1})
        async with engine.connect() as connection:
            assert (await connection.execute(select(notes.c.id))).scalars().all() == [1]
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(notes.metadata.drop_all)
        await engine.dispose()


@pytest.mark.parametrize("replay", [False, True], ids=["write", "read"])
async def test_a_direct_write_that_may_have_happened_is_never_run_twice(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, replay: bool
) -> None:
    # No answer within the client's command timeout: the statement may have committed. A write
    # (replay=False) is unavailable at once, its connection dropped; a read is replayed.
    engine = one_connection_engine(postgres_url, db_command_timeout_seconds=0.2)
    replayed: list[str] = []
    original = AsyncConnection.exec_driver_sql

    async def spy(self: AsyncConnection, statement: str, *args: Any) -> Any:
        replayed.append(statement)
        return await original(self, statement, *args)

    monkeypatch.setattr(AsyncConnection, "exec_driver_sql", spy)
    slow = select(func.pg_sleep(1).label("slept"))
    try:
        async with engine.connect() as connection:
            with pytest.raises(db.DatabaseUnavailableError) as raised:
                await db.execute_direct(connection, slow, {}, replay=replay)
            # Left mid-statement either way: the connection is not used again.
            assert connection.invalidated
        assert raised.value.connection_invalidated
        assert replayed == ([str(slow.compile(dialect=engine.dialect))] if replay else [])
        async with engine.connect() as connection:  # the pool still serves
            assert await db.fetch_direct(connection, "SELECT 1 AS one") == [{"one": 1}]
    finally:
        await engine.dispose()


def test_statements_that_cannot_run_directly_are_refused() -> None:
    dialect = create_async_engine("postgresql+asyncpg://u@localhost/d").dialect
    notes = Table("notes", MetaData(), Column("id", Integer), Column("n", Integer, default=7))
    with pytest.raises(ValueError, match="every value"):  # n's default is computed in Python
        db.DirectStatement(
            select(func.count()).select_from(
                insert(notes).values(id=bindparam("id")).returning(notes.c.id).cte("w")
            ),
            dialect,
        )
    created = Column("created", UTCDateTime)
    logged = Table("logged", MetaData(), created, Column("other", UTCDateTime))
    with pytest.raises(ValueError, match="label"):  # converted, so it needs a name
        db.DirectStatement(select(func.max(created)), dialect)
    with pytest.raises(ValueError, match="label"):
        db.DirectStatement(select(created, logged.c.other.label("created")), dialect)
