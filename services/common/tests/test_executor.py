"""The executor of single statements: asyncpg and its pool on Postgres, the engine on SQLite.

Connections shared and bounded, replaced when the server closed them, never handed on
mid-statement; failures classified as SQLAlchemy's would be; values converted as SQLAlchemy
converts them; a write that may have happened never run twice.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from daemons import PostgresServer
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
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.types import TypeDecorator

from regatta.common.data import db, executor
from regatta.common.data.columns import Money, UTCDateTime
from regatta.common.data.errors import IdempotencyKeyInFlightError
from regatta.common.data.failures import DatabaseUnavailableError, cut
from regatta.common.settings import Environment, ServiceSettings
from tests.reliability.faultproxy import FaultProxy
from tests.servers import Terminate

PID = select(func.pg_backend_pid().label("pid"))


def sleeping(seconds: float) -> Any:
    """A read that holds its connection for ``seconds``."""
    return select(func.pg_backend_pid().label("pid"), func.pg_sleep(seconds).label("slept"))


def database_of(postgres_url: str, *, pool: int = 4, **settings: Any) -> db.Database:
    """The service's database with ``DB_POOL_SIZE=pool`` (so ``pool // 2`` for statements)."""
    return db.create_database(
        ServiceSettings(
            environment=Environment.TEST,
            database_url=SecretStr(postgres_url),
            db_pool_size=pool,
            **settings,
        )
    )


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[db.Database]:
    database = database_of(postgres_url)
    try:
        yield database
    finally:
        await database.close()


async def pid(database: db.Database) -> int:
    return int((await database.read(PID, {}))[0]["pid"])


def observed(database: db.Database) -> list[str]:
    """A list that grows by each statement the executor runs."""
    ran: list[str] = []
    database.statements.observe = lambda sql, _seconds: ran.append(sql)
    return ran


def test_the_pool_is_split_by_where_requests_run() -> None:
    # Requests on both: half each.
    assert db.split_pool(15) == (7, 8)
    assert db.split_pool(4) == (2, 2)
    assert db.split_pool(1) == (1, 1)  # at least one each
    # Requests on the executor only (items, heroes): sessions keep what background work needs.
    only = functools.partial(db.split_pool, sessions=False)
    assert only(15) == (13, 2)
    assert only(5) == (3, 2)
    assert only(3) == (2, 1)
    assert only(1) == (1, 1)
    # Requests in sessions only (notifications): no executor, the whole pool for sessions.
    assert db.split_pool(5, statements=False) == (0, 5)


@pytest.mark.postgres
async def test_reads_share_the_executors_connections_and_never_take_more(
    database: db.Database,
) -> None:
    assert isinstance(database.statements, executor.AsyncpgExecutor)
    assert database.statements.size == 2
    rows = await asyncio.gather(*(database.read(sleeping(0.02), {}) for _ in range(12)))
    assert len({row[0]["pid"] for row in rows}) == 2  # twelve reads, two connections
    assert database.statements.in_use == 0
    pids = {await pid(database) for _ in range(20)}
    assert pids <= {row[0]["pid"] for row in rows}  # kept between reads, not opened anew


@pytest.mark.postgres
async def test_requests_waiting_for_a_connection_are_served_in_turn(
    database: db.Database,
) -> None:
    # Twenty clients on the executor's two connections. In turn, a request is overtaken by at
    # most the nineteen other clients waiting before it; asyncpg's pool alone hands connections
    # released for those waiting to newcomers, and a few wait for hundreds of others.
    clients, statements = 20, 25
    served = 0
    overtaken: list[int] = []

    async def hold() -> None:
        async with database.connect() as connection:
            await connection.rows(PID)
            await asyncio.sleep(0.05)

    # Both connections open first: a client opening one is not overtaken by anybody's turn, but
    # on a loaded machine the other connection may serve dozens of statements meanwhile.
    await asyncio.gather(hold(), hold())

    async def client() -> None:
        nonlocal served
        for _ in range(statements):
            before = served
            async with database.connect() as connection:
                overtaken.append(served - before)
                served += 1
                await connection.rows(PID)
            await asyncio.sleep(0)  # the rest of the request

    await asyncio.gather(*(client() for _ in range(clients)))
    assert served == clients * statements
    assert max(overtaken) < clients


@pytest.mark.postgres
async def test_sessions_are_served_while_the_statements_are_busy(database: db.Database) -> None:
    busy = [asyncio.create_task(database.read(sleeping(0.5), {})) for _ in range(4)]
    await asyncio.sleep(0.1)  # two reads running, two waiting for them
    async with asyncio.timeout(0.3), database.sessions() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    await asyncio.gather(*busy)


@pytest.mark.postgres
async def test_a_kept_connection_the_server_closed_is_not_handed_out(
    database: db.Database, terminate_backend: Terminate
) -> None:
    first = await pid(database)
    await terminate_backend(first)
    await asyncio.sleep(0.2)  # the server's goodbye reaches the socket
    ran = observed(database)
    second = await pid(database)  # no error: the pool opened another
    assert second != first
    assert len(ran) == 1


@pytest.mark.postgres
async def test_a_read_that_meets_a_cut_connection_runs_once_more_on_another(
    database: db.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when the cut comes before the pool could see it: the read is the first to meet it.
    first = await pid(database)
    fetch = asyncpg.connection.Connection.fetch

    async def cut_once(connection: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.undo()
        connection.terminate()
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", cut_once)
    ran = observed(database)
    second = await pid(database)
    assert asyncpg.connection.Connection.fetch is fetch
    assert second != first
    assert len(ran) == 2  # the cut read, and the read again


@pytest.mark.postgres
async def test_a_write_never_meets_a_kept_connection_the_server_closed(
    database: db.Database, terminate_backend: Terminate
) -> None:
    first = await pid(database)
    await terminate_backend(first)
    await asyncio.sleep(0.2)  # the server's goodbye reaches the socket
    async with database.connect() as connection:  # a write is never run twice: never tried
        rows = await connection.rows(PID)
    assert rows[0]["pid"] != first


def test_only_a_cut_connection_is_worth_a_second_read() -> None:
    closed = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    assert cut(DatabaseUnavailableError("SELECT 1", None, closed))
    assert cut(ConnectionResetError())
    assert cut(asyncpg.exceptions.InterfaceError("connection is closed"))
    assert not cut(TimeoutError())
    assert not cut(asyncpg.exceptions.QueryCanceledError("canceling statement"))
    assert not cut(sa_exc.DBAPIError("SELECT 1/0", None, ZeroDivisionError()))


@pytest.mark.postgres
async def test_a_read_that_fails_for_itself_is_not_run_again_and_keeps_its_connection(
    database: db.Database,
) -> None:
    first = await pid(database)
    ran = observed(database)
    with pytest.raises(sa_exc.DataError, match="division by zero") as raised:
        await database.read(select(func.pg_sleep(0).label("s"), text("1/0")), {})
    assert not isinstance(raised.value, DatabaseUnavailableError)  # a fault: 500
    with pytest.raises(sa_exc.ProgrammingError):  # as through SQLAlchemy
        await database.read(select(text("* FROM no_such_table")), {})
    assert len(ran) == 2
    assert await pid(database) == first  # the connection is fine and serves on


@pytest.mark.postgres
async def test_a_client_error_inside_keeps_the_connection(database: db.Database) -> None:
    first = await pid(database)
    with pytest.raises(IdempotencyKeyInFlightError):
        async with database.connect():
            raise IdempotencyKeyInFlightError
    assert await pid(database) == first


@pytest.mark.postgres
async def test_a_connection_idle_for_a_while_is_pinged_and_kept(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor, "IDLE_PING_SECONDS", 0.1)
    pings: list[str] = []
    execute = asyncpg.Connection.execute

    async def counted(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        pings.append(query)
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "execute", counted)
    database = database_of(postgres_url)
    try:
        first = await pid(database)
        assert await pid(database) == first
        assert pings == []  # in steady use, no ping
        await asyncio.sleep(0.3)
        assert await pid(database) == first  # a new connection would cost a backend process
        assert pings == ["SELECT 1"]
    finally:
        await database.close()


@pytest.mark.postgres
async def test_an_idle_connection_whose_path_was_lost_is_replaced_after_its_ping(
    postgres_server: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A firewall or NAT that forgets an idle connection tells neither end: a statement sent on
    # it would wait for its whole timeout. The ping finds out in a second, and a request
    # (a write too: writes are never repeated) runs on a new connection.
    monkeypatch.setattr(executor, "IDLE_PING_SECONDS", 0.1)
    monkeypatch.setattr(executor, "PING_TIMEOUT_SECONDS", 0.3)
    database_name = make_url(postgres_url).database
    assert database_name
    with FaultProxy(postgres_server.port, name="postgres-proxy") as proxy:
        database = database_of(
            postgres_server.url(database_name, port=proxy.port), db_command_timeout_seconds=5
        )
        try:
            first = await pid(database)
            proxy.strand()
            await asyncio.sleep(0.3)
            async with asyncio.timeout(2):
                async with database.connect() as connection:
                    second = (await connection.rows(PID))[0]["pid"]
            assert second != first
        finally:
            await database.close()


@pytest.mark.postgres
async def test_the_server_keeps_both_pools_connections_alive(database: db.Database) -> None:
    keepalives = select(
        func.current_setting("tcp_keepalives_idle").label("idle"),
        func.current_setting("tcp_keepalives_interval").label("interval"),
        func.current_setting("tcp_keepalives_count").label("count"),
    )
    expected = [{"idle": "30", "interval": "5", "count": "3"}]
    assert await database.read(keepalives) == expected
    async with database.sessions() as session:
        assert [dict(row._mapping) for row in await session.execute(keepalives)] == expected


@pytest.mark.postgres
async def test_a_connection_idle_too_long_is_closed(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor, "IDLE_SECONDS", 0.1)
    database = database_of(postgres_url)
    try:
        first = await pid(database)
        assert await pid(database) == first
        await asyncio.sleep(0.4)
        assert await pid(database) != first
    finally:
        await database.close()


@pytest.mark.postgres
async def test_waiting_longer_than_the_pool_timeout_is_unavailable(postgres_url: str) -> None:
    database = database_of(postgres_url, pool=2, db_pool_timeout_seconds=0.2)
    try:
        async with database.connect():
            with pytest.raises(sa_exc.TimeoutError, match="no connection was free"):
                await pid(database)
        await pid(database)
    finally:
        await database.close()


@pytest.mark.postgres
async def test_a_read_cancelled_mid_statement_does_not_hand_its_connection_on(
    postgres_url: str,
) -> None:
    database = database_of(postgres_url, pool=2)  # one connection for statements
    try:
        read = asyncio.create_task(database.read(sleeping(5), {}))
        await asyncio.sleep(0.2)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        async with asyncio.timeout(2):  # the sleep was cancelled on the server, not waited for
            assert await pid(database)
    finally:
        await database.close()


@pytest.mark.postgres
async def test_close_closes_every_connection(postgres_url: str) -> None:
    database = database_of(postgres_url)
    await asyncio.gather(*(database.read(sleeping(0.02), {}) for _ in range(4)))
    await database.close()
    admin = create_async_engine(postgres_url)
    try:
        async with admin.connect() as connection:
            left = await connection.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'regatta'")
            )
        assert left == 0
    finally:
        await admin.dispose()


async def test_sqlite_runs_the_statements_through_the_engine(tmp_path: Any) -> None:
    settings = ServiceSettings(
        environment=Environment.TEST, database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path}/x")
    )
    database = db.create_database(settings)
    try:
        assert isinstance(database.statements, executor.EngineExecutor)
        assert await database.read(select(literal(1).label("one")), {}) == [{"one": 1}]
        async with database.connect() as connection:
            assert await connection.rows(text("CREATE TABLE t (n INTEGER)")) == []
    finally:
        await database.close()


@pytest.mark.postgres
async def test_a_read_past_the_statement_timeout_is_unavailable(postgres_url: str) -> None:
    database = database_of(postgres_url, pool=2, db_statement_timeout_ms=50)
    try:
        async with database.connect() as connection:
            with pytest.raises(DatabaseUnavailableError):
                await connection.rows(select(func.pg_sleep(1).label("slept")))
            # The statement was cancelled, the connection is fine.
            assert await connection.rows(select(literal(1).label("one"))) == [{"one": 1}]
        first = await pid(database)
        with pytest.raises(DatabaseUnavailableError):
            await database.read(select(func.pg_sleep(1).label("slept")))
        assert await pid(database) == first  # and it serves on
    finally:
        await database.close()


@pytest.mark.postgres
async def test_a_read_past_its_command_timeout_does_not_hand_its_connection_on(
    postgres_url: str,
) -> None:
    # The client gave up mid-statement: the connection may still be busy on the server.
    database = database_of(postgres_url, pool=2, db_command_timeout_seconds=0.1)
    try:
        first = await pid(database)
        with pytest.raises(DatabaseUnavailableError):
            await database.read(sleeping(1))
        async with asyncio.timeout(0.5):
            assert await pid(database) != first
        assert database.statements.in_use == 0
    finally:
        await database.close()


@pytest.mark.postgres
async def test_a_request_waiting_when_the_executor_closes_is_unavailable(
    postgres_url: str,
) -> None:
    database = database_of(postgres_url, pool=2)  # one connection for statements
    statements = database.statements
    holding = asyncio.create_task(database.read(sleeping(0.3), {}))
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(pid(database))
    await asyncio.sleep(0.05)
    await statements.close()  # waits for the lent connection
    assert (await holding)[0]["pid"]
    with pytest.raises(DatabaseUnavailableError):
        await waiting
    with pytest.raises(DatabaseUnavailableError):
        await pid(database)
    assert statements.in_use == 0
    await database.close()


@pytest.mark.postgres
async def test_a_statement_converts_as_sqlalchemy_does(postgres_url: str) -> None:
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
        bindparam("shout", type_=_Shouted).label("shout"),
    )
    parameters = {
        "document": {"a": [1, "ü", None]},
        "at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
        "price": Decimal("12.50"),
        "blob": b"\x00\xff",
        "missing": None,
        "shout": "quiet",
    }
    database = database_of(postgres_url)
    try:
        async with database.engine.connect() as connection:
            expected = dict((await connection.execute(statement, parameters)).one()._mapping)
        [read] = await database.read(statement, parameters)
        assert read == expected
        assert expected["document"] == {"a": [1, "ü", None]}
        assert expected["at"] == parameters["at"]
        # As the column types return them (asyncpg's values kept as they are: asyncpg_native).
        assert expected["at"].tzinfo is UTC
        assert read["at"].tzinfo is UTC
        assert str(read["price"]) == str(expected["price"]) == "12.50"
        assert read["shout"] == "QUIET"  # a TypeDecorator that converts: by its label
        with pytest.raises(sa_exc.StatementError):  # a naive datetime is refused, as always
            await database.read(statement, {**parameters, "at": datetime.now()})  # noqa: DTZ005
    finally:
        await database.close()


@pytest.mark.postgres
async def test_statements_of_one_shape_compile_once_and_carry_their_own_values(
    database: db.Database,
) -> None:
    # A filter builds its statement per request, its values inside: one compilation serves
    # every request of that shape, each with its values.
    series = select(func.generate_series(1, 10).label("n")).subquery()

    def at_most(limit: int) -> Any:
        return select(series.c.n).where(series.c.n <= limit).order_by(series.c.n)

    assert [row["n"] for row in await database.read(at_most(3), {})] == [1, 2, 3]
    assert [row["n"] for row in await database.read(at_most(1), {})] == [1]
    assert isinstance(database.statements, executor.AsyncpgExecutor)
    compiled = database.statements._compiled
    assert len(compiled) == 1


@pytest.mark.postgres
async def test_a_write_is_committed_once_and_a_failed_one_leaves_nothing(
    database: db.Database,
) -> None:
    notes = Table("direct_notes", MetaData(), Column("id", Integer, primary_key=True))
    insert_once = select(func.count()).select_from(
        insert(notes).values(id=bindparam("id")).returning(notes.c.id).cte("written")
    )
    async with database.engine.begin() as connection:
        await connection.run_sync(notes.metadata.create_all)
    try:
        async with database.connect() as connection:
            assert await connection.rows(insert_once, {"id": 1}) == [{"count_1": 1}]
            with pytest.raises(sa_exc.IntegrityError):  # SQLAlchemy's error, nothing left
                await connection.rows(insert_once, {"id": 1})
        assert await database.read(select(notes.c.id), {}) == [{"id": 1}]
    finally:
        async with database.engine.begin() as connection:
            await connection.run_sync(notes.metadata.drop_all)


@pytest.mark.postgres
async def test_a_write_that_may_have_happened_is_never_run_twice(postgres_url: str) -> None:
    # No answer within the client's command timeout: the statement may have committed. It is
    # unavailable at once, not run again; the connection is not handed on mid-statement.
    database = database_of(postgres_url, pool=2, db_command_timeout_seconds=0.2)
    ran = observed(database)
    try:
        async with database.connect() as connection:
            with pytest.raises(DatabaseUnavailableError):
                await connection.rows(select(func.pg_sleep(1).label("slept")))
        assert len(ran) == 1
        async with asyncio.timeout(2):
            assert await pid(database)
    finally:
        await database.close()


def test_statements_that_cannot_run_on_asyncpg_are_refused() -> None:
    dialect = create_async_engine("postgresql+asyncpg://u@localhost/d").dialect
    notes = Table("notes", MetaData(), Column("id", Integer), Column("n", Integer, default=7))
    with pytest.raises(ValueError, match="every value"):  # n's default is computed in Python
        executor._Compiled(
            select(func.count()).select_from(
                insert(notes).values(id=bindparam("id")).returning(notes.c.id).cte("w")
            ),
            dialect,
        )
    created = Column("created", _Shouted)
    logged = Table("logged", MetaData(), created, Column("other", _Shouted))
    with pytest.raises(ValueError, match="label"):  # converted, so it needs a name
        executor._Compiled(select(func.max(created)), dialect)
    with pytest.raises(ValueError, match="label"):
        executor._Compiled(select(created, logged.c.other.label("created")), dialect)
    # A type whose values asyncpg returns as they are needs none.
    executor._Compiled(select(func.max(Column("at", UTCDateTime))), dialect)


class _Shouted(TypeDecorator[str]):
    """Text read back in capitals: a conversion the executor must run by column name."""

    impl = Text
    cache_ok = True

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:  # noqa: ARG002
        return value.upper() if value is not None else None


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"]
)
async def test_a_transaction_commits_on_exit_and_rolls_back_on_an_error(
    backend: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path}/t.db"
    )
    database = database_of(url)
    notes = Table("transaction_notes", MetaData(), Column("id", Integer, primary_key=True))
    async with database.engine.begin() as schema:
        await schema.run_sync(notes.metadata.create_all)
    try:
        async with database.transaction() as written:
            await written.rows(insert(notes).values(id=1))
            await written.rows(insert(notes).values(id=2))

        async def refused_after_a_write() -> None:
            async with database.transaction() as connection:
                await connection.rows(insert(notes).values(id=3))
                raise IdempotencyKeyInFlightError

        async def second_write_fails() -> None:
            async with database.transaction() as connection:
                await connection.rows(insert(notes).values(id=4))
                await connection.rows(insert(notes).values(id=1))

        with pytest.raises(IdempotencyKeyInFlightError):
            await refused_after_a_write()
        with pytest.raises(sa_exc.IntegrityError):  # the second statement fails: none stays
            await second_write_fails()
        ids = await database.read(select(notes.c.id).order_by(notes.c.id))
        assert [row["id"] for row in ids] == [1, 2]
    finally:
        async with database.engine.begin() as schema:
            await schema.run_sync(notes.metadata.drop_all)
        await database.close()
