"""The async engine, the session factory and the session dependency."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool
from sqlalchemy.sql import Select
from sqlalchemy.types import TypeDecorator

from regatta.common.data.errors import DataError
from regatta.common.data.lending import ConnectionLender, Lent
from regatta.common.settings import ServiceSettings

logger = logging.getLogger("regatta.db")


# Server settings of every connection, for the planner (tests/plans pins what they buy):
# - asyncpg prepares every statement, and after five runs on one connection Postgres may keep
#   a generic plan that cannot see the values: for ``name ILIKE $1`` that plan walks the
#   primary key and filters every row. A custom plan per run costs its planning (measured in
#   tests/load/README.md), less than preparing each statement anew would.
# - A request reads one page: starting parallel workers costs more than the page itself.
PLANNER_SETTINGS = {"plan_cache_mode": "force_custom_plan", "max_parallel_workers_per_gather": "0"}


def create_engine(settings: ServiceSettings) -> AsyncEngine:
    """Build the engine: a sized asyncpg pool for Postgres, WAL-mode aiosqlite for SQLite."""
    url = make_url(settings.database_url.get_secret_value())
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "server_settings": {
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "application_name": "regatta",
            **PLANNER_SETTINGS,
        },
        # Connecting (and so reconnecting after an outage) may take no longer than waiting
        # for a pooled connection would.
        "timeout": settings.db_pool_timeout_seconds,
        "command_timeout": settings.db_command_timeout_seconds,
    }
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
        connect_args=connect_args,
        # Errors (and so log lines) show statements but never values: a value may be a secret.
        hide_parameters=True,
    )
    event.listen(engine.sync_engine, "handle_error", _classify_unavailable)
    event.listen(engine.sync_engine.pool, "checkin", _note_checkin)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return engine


# A connection idle for longer than this is pinged before use. SQLAlchemy's pool_pre_ping
# pings every checkout, and with asyncpg a ping is three round trips (BEGIN, ";", ROLLBACK):
# more than the point read it guards. A connection in steady use needs no ping: if the
# database went away under it, the statement fails, _classify_unavailable marks that a
# disconnect, and the pool replaces every connection opened before it.
IDLE_PING_SECONDS = 10.0


def _note_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(
    dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        dbapi_connection.ping()
    except Exception as exc:
        # The pool drops this connection and checks out another (or opens a new one).
        raise sa_exc.DisconnectionError(f"an idle connection no longer answers: {exc!r}") from exc


class DatabaseUnavailableError(sa_exc.OperationalError):
    """The database did not answer in time, or the connection to it broke: retry shortly."""


def _classify_unavailable(context: ExceptionContext) -> BaseException | None:
    """Tell "the database is gone or too slow" (503) from a fault in the statement (500).

    asyncpg reports a statement timeout and a connection lost mid-statement as plain errors;
    they mean the same as a refused connection. A connection that broke, or that a client-side
    timeout left mid-statement, is also marked as a disconnect so that the pool drops it.
    """
    cause: BaseException | None = context.original_exception
    while cause is not None:
        if isinstance(cause, _UNAVAILABLE_CONNECTION_FINE):
            break  # the server is there, its connections fine: no room, or out of time
        if isinstance(cause, _BROKEN) or (
            isinstance(cause, _MAYBE_BROKEN) and any(sign in str(cause) for sign in _BROKEN_SIGNS)
        ):
            context.is_disconnect = True
            break
        cause = cause.__cause__
    else:
        return None
    return DatabaseUnavailableError(
        context.statement,
        None,
        context.original_exception,
        hide_parameters=True,
        connection_invalidated=context.is_disconnect,
    )


# statement_timeout (the statement is gone, the connection is fine), and the server short of
# resources (SQLSTATE class 53: connection slots above all, when the pools of every pod
# outgrow max_connections; also disk, memory, a configured limit).
_UNAVAILABLE_CONNECTION_FINE = (
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.InsufficientResourcesError,
)
# Connection-level failures, and the server ending the session (an administrator, a restart
# or a crash: the rest of SQLSTATE class 57 besides a cancelled statement).
_BROKEN = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
    TimeoutError,
)
_MAYBE_BROKEN = (
    RuntimeError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
# uvloop's words for a closed socket; asyncpg's for a connection left mid-statement.
_BROKEN_SIGNS = ("handler is closed", "another operation", "connection is closed")


def _cut(error: BaseException) -> bool:
    """Whether ``error`` says the connection had been closed (not that it timed out)."""
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, _CUT):
            return True
        if isinstance(cause, _MAYBE_BROKEN) and any(sign in str(cause) for sign in _CUT_SIGNS):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None) or cause.__context__
    return False


# A socket reset or closed under the connection; asyncpg's and uvloop's words for one.
_CUT = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
_CUT_SIGNS = ("connection is closed", "handler is closed", "connection was closed")


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    # WAL lets readers run beside the single writer; busy_timeout queues writers instead of
    # failing them with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # LIKE is case-sensitive on Postgres; make SQLite agree (ILIKE is rendered with lower()).
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()
    # SQLite's lower() changes ASCII letters only: searches in any case lower with Python.
    dbapi_connection.create_function("regatta_lower", 1, _lower, deterministic=True)


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


async def fetch_direct(
    connection: AsyncConnection, statement: str, *args: Any, replay: bool = True
) -> list[dict[str, Any]]:
    """The rows of a Postgres statement, run by asyncpg itself.

    A read, or one write on an autocommit connection (a statement is then its own
    transaction: if it fails, nothing of it stays). The values are asyncpg's, without the
    column types' conversions (the caller applies them, or :class:`DirectStatement` does).

    The connection still comes from (and goes back to) SQLAlchemy's pool; only the execution
    skips SQLAlchemy's statement machinery, which costs more than the query on the hottest
    reads (``statement`` is SQL in asyncpg's ``$n`` style, prepared once per connection by
    asyncpg). A cancelled statement is a timeout (503). Any other failure is replayed through
    SQLAlchemy, so that its handling applies exactly as to every other statement: the error
    classified (``DatabaseUnavailableError`` or not), a broken connection and the pool's older
    connections invalidated. A read is safe to repeat.

    A write is not, unless the server said it failed (then it left nothing behind): a
    client-side timeout, a connection lost or a fault reading the reply may come after the
    commit. With ``replay=False`` such a failure is not replayed: the connection is
    invalidated and the answer is "unavailable" (503), as the statement may or may not have
    happened; a keyed retry then replays or completes it.
    """
    sync = connection.sync_connection
    if sync is not None and not sync.invalidated and not sync.closed:
        raw = sync.connection  # already checked out: no I/O, so no greenlet to get it
    else:
        raw = await connection.get_raw_connection()
    try:
        records = await _timed_fetch(connection, raw, statement, args)
    except asyncpg.exceptions.QueryCanceledError as exc:
        raise DatabaseUnavailableError(statement, None, exc, hide_parameters=True) from exc
    except Exception as exc:
        if not replay and not isinstance(exc, asyncpg.exceptions.PostgresError):
            await connection.invalidate()
            raise DatabaseUnavailableError(
                statement, None, exc, hide_parameters=True, connection_invalidated=True
            ) from exc
        # Replayed, so that SQLAlchemy classifies it.
        rows = (await connection.exec_driver_sql(statement, args)).all()
        return [dict(row._mapping) for row in rows]  # noqa: SLF001 -- the public mapping
    return [dict(record.items()) for record in records]


# Statement observers of engines whose direct statements are timed (observability.py), by
# the engine's pool: the autocommit reader and the engine share it.
_direct_observers: weakref.WeakKeyDictionary[Any, Callable[[str, float], None]] = (
    weakref.WeakKeyDictionary()
)


def observe_direct_statements(engine: AsyncEngine, observe: Callable[[str, float], None]) -> None:
    """Have ``observe(statement, seconds)`` called for each statement :func:`fetch_direct` runs."""
    _direct_observers[engine.sync_engine.pool] = observe


# The tracer of each traced engine's statements (observability.instrument_engine), by pool.
# Untraced engines get the no-op tracer: the statements run the same code either way.
_direct_tracers: weakref.WeakKeyDictionary[Any, Tracer] = weakref.WeakKeyDictionary()
_UNTRACED = trace.NoOpTracer()


def trace_direct_statements(engine: AsyncEngine, tracer: Tracer) -> None:
    """A client span, through ``tracer``, for each statement :func:`fetch_direct` runs."""
    _direct_tracers[engine.sync_engine.pool] = tracer


async def _timed_fetch(
    connection: AsyncConnection, raw: Any, statement: str, args: Sequence[Any]
) -> list[Any]:
    pool = connection.engine.sync_engine.pool
    observe = _direct_observers.get(pool)
    tracer = _direct_tracers.get(pool, _UNTRACED)
    # Named and described as SQLAlchemy's instrumentation names the other statements.
    operation = statement.split(None, 1)[0].upper() if statement else "SQL"
    with tracer.start_as_current_span(
        operation,
        kind=SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "db.statement": statement},
    ):
        started = time.perf_counter()
        try:
            records: list[Any] = await raw.driver_connection.fetch(statement, *args)
        finally:
            if observe is not None:
                observe(statement, time.perf_counter() - started)
    return records


class DirectStatement:
    """A SQLAlchemy statement compiled once, to run by asyncpg itself (:func:`fetch_direct`).

    Its parameters go in the compiled order through the column types' bind processors, and
    its result values through the TypeDecorators' conversions (asyncpg's own values are
    already what the dialect's other types return): what SQLAlchemy's execution
    does, without building an execution context for every call (a test compares the two).
    For the hottest statements only, whose SQL does not change between calls: no expanding
    parameters, no column defaults computed in Python, each converted column labelled.
    """

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        names = compiled.positiontup
        if (
            names is None
            or any(bind.expanding for bind in compiled.binds.values())
            or compiled.insert_prefetch
            or compiled.update_prefetch
        ):
            msg = "only a positional statement with its every value given runs directly"
            raise ValueError(msg)
        self.dialect = dialect
        self.sql = str(compiled)
        self._compiled = compiled
        self._binds = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        ]
        # asyncpg's values are already what the dialect's types return (its codecs decode
        # JSON, numerics are Decimals), so only TypeDecorators convert.
        converted = [
            (column.key, column.type)
            for column in statement.selected_columns
            if isinstance(column.type, TypeDecorator)
        ]
        labels = [label for label, _ in converted]
        if None in labels or len(set(labels)) != len(labels):
            msg = "label each converted column, uniquely: results are converted by name"
            raise ValueError(msg)
        self._results = [(str(label), kind) for label, kind in converted]

    async def rows(
        self, connection: AsyncConnection, parameters: Mapping[str, Any], *, replay: bool = True
    ) -> list[dict[str, Any]]:
        """The result rows, by column name (a failure is handled as in fetch_direct)."""
        values = self._compiled.construct_params(parameters)
        try:
            arguments = [
                value if process is None else process(value)
                for name, process in self._binds
                for value in (values[name],)
            ]
        except Exception as exc:  # a value its type refuses: SQLAlchemy's error for it
            raise sa_exc.StatementError(
                f"({type(exc).__module__}.{type(exc).__name__}) {exc}",
                self.sql,
                None,
                exc,
                hide_parameters=True,
            ) from exc
        rows = await fetch_direct(connection, self.sql, *arguments, replay=replay)
        for row in rows:
            for key, decorator in self._results:
                row[key] = decorator.process_result_value(row[key], self.dialect)
        return rows


_direct_statements: dict[tuple[Select[Any], Dialect], DirectStatement] = {}


# More than a process's statements means engines come and go (tests): start again.
_MAX_DIRECT_STATEMENTS = 64


async def execute_direct(
    connection: AsyncConnection,
    statement: Select[Any],
    parameters: Mapping[str, Any],
    *,
    replay: bool = True,
) -> list[dict[str, Any]]:
    """Run ``statement`` as a :class:`DirectStatement` (compiled on first use, then kept).

    For statements built once and reused (a few per process). ``replay=False`` for a write:
    see :func:`fetch_direct`.
    """
    key = (statement, connection.dialect)
    direct = _direct_statements.get(key)
    if direct is None:
        if len(_direct_statements) >= _MAX_DIRECT_STATEMENTS:
            _direct_statements.clear()
        _direct_statements[key] = direct = DirectStatement(statement, connection.dialect)
    return await direct.rows(connection, parameters, replay=replay)


async def fetch_rows(
    connection: AsyncConnection,
    statement: Select[Any],
    parameters: Mapping[str, Any],
    *,
    direct: bool,
    replay: bool = True,
) -> list[dict[str, Any]]:
    """The rows of ``statement``, by column name.

    Run by asyncpg itself when ``direct`` (:func:`execute_direct`, ``replay`` as there), else
    through SQLAlchemy.
    """
    if direct:
        return await execute_direct(connection, statement, parameters, replay=replay)
    result = await connection.execute(statement, parameters)
    return [dict(row._mapping) for row in result]  # noqa: SLF001 -- the public mapping


class Database:
    """The engine and its session factory, created in the lifespan and closed at shutdown."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # expire_on_commit=False: objects stay readable after commit without a lazy reload.
        self.sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        # Single statements need no transaction (no BEGIN, no ROLLBACK, same pool): reads, and
        # the one-statement creates of resources.py (each statement is its own transaction).
        self.reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Hot reads run by asyncpg itself (fetch_direct) on Postgres, traced or not: each
        # opens its own span when the engine is traced (trace_direct_statements).
        self._direct = engine.dialect.name == "postgresql"
        # Half the pool serves the hot statements through a lender (see lend()), the other half
        # everything else; a pool of one is not split.
        pool = engine.sync_engine.pool
        self.lender = (
            ConnectionLender(self.reader, size=pool.size() // 2, timeout=pool.timeout())
            if self.direct and isinstance(pool, QueuePool) and pool.size() > 1
            else None
        )

    @property
    def direct(self) -> bool:
        """Whether the hot statements run by asyncpg itself (and on lent connections)."""
        return self._direct

    @direct.setter
    def direct(self, direct: bool) -> None:
        # Off (tracing): every statement through SQLAlchemy, on connections of the whole pool.
        self._direct = direct
        if not direct:
            self.lender = None

    @property
    def dialect(self) -> str:
        """The backend name: ``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection for one or two :func:`fetch_direct` statements.

        From the lender when there is one (Postgres): checking a connection out of
        SQLAlchemy's pool and back in costs about an eighth of a point read, a lent one a
        small fraction of that. A connection that failed, was invalidated or was cancelled
        mid-statement goes back to the pool, never to the next request.
        """
        if self.lender is None:
            async with self.reader.connect() as connection:
                yield connection
            return
        async with _borrowed(self.lender) as lent:
            yield lent.connection

    async def read_direct(
        self, statement: Select[Any], parameters: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """The rows of a read run by :func:`execute_direct` on a lent connection.

        A connection kept by the lender may have been cut since its last use (the server
        restarted, a proxy closed it): when a read fails on one because its connection was
        closed, the read runs once more on a fresh checkout, which the pool pings first. A
        read is safe to repeat; a timeout is not retried (it would only double the wait).
        """
        if self.lender is not None:
            lent: Lent | None = None
            try:
                async with _borrowed(self.lender) as lent:
                    return await execute_direct(lent.connection, statement, parameters)
            except Exception as exc:
                if lent is None or not (lent.reused and _cut(exc)):
                    raise
                logger.info("a kept connection had broken; the read runs on a fresh one")
        async with self.reader.connect() as connection:
            return await execute_direct(connection, statement, parameters)

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Return the lender's connections, then close every pooled connection."""
        if self.lender is not None:
            await self.lender.close()
        await self.engine.dispose()


@asynccontextmanager
async def _borrowed(lender: ConnectionLender) -> AsyncIterator[Lent]:
    # A lent connection, given back for the next request unless the body failed for any
    # reason but the client's (errors.py) or was cancelled, perhaps mid-statement.
    lent = await lender.acquire()
    try:
        yield lent
    except DataError:
        await lender.release(lent, reuse=True)
        raise
    except BaseException:
        await lender.release(lent, reuse=False)
        raise
    await lender.release(lent, reuse=True)
