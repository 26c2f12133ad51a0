"""The one executor of the resources' statements: asyncpg on Postgres, the engine on SQLite."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from types import SimpleNamespace
from typing import Any, Protocol, cast

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator

from regatta.common.data.failures import DatabaseUnavailableError, cut, unavailability

logger = logging.getLogger("regatta.db")

# A connection idle this long is pinged before it serves again: a proxy may have dropped it.
IDLE_PING_SECONDS = 10.0
PING_TIMEOUT_SECONDS = 1.0
IDLE_SECONDS = 300.0  # closed when idle this long (asyncpg's default)

_UNTRACED = trace.NoOpTracer()
_NO_PARAMETERS: Mapping[str, Any] = {}
_CLOSED = "the executor is closed"
# More shapes than a process has statements: some vary in structure; start again, not grow.
_MAX_COMPILED = 256
# Idle connections being closed, referenced until done: asyncio keeps only weak references.
_closing: set[asyncio.Task[None]] = set()
# A fault of asyncpg's as SQLAlchemy's error for it (the first that matches).
_FAULTS: tuple[tuple[type[BaseException], type[sa_exc.DBAPIError]], ...] = (
    (asyncpg.exceptions.IntegrityConstraintViolationError, sa_exc.IntegrityError),
    (asyncpg.exceptions.SyntaxOrAccessError, sa_exc.ProgrammingError),
    (asyncpg.exceptions.DataError, sa_exc.DataError),
    (asyncpg.exceptions.PostgresError, sa_exc.DatabaseError),
    (Exception, sa_exc.DBAPIError),
)


class Statements(Protocol):
    """A connection to run statements on, one after another."""

    async def rows(
        self, statement: Executable, parameters: Mapping[str, Any] = _NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        """The statement's result rows, by column name (none for a statement without)."""


class EngineExecutor:
    """Statements through SQLAlchemy's engine, autocommit (SQLite; any engine in tests)."""

    # No connections beyond the engine's pool, which counts its own.
    size = 0
    in_use = 0

    def __init__(self, engine: AsyncEngine) -> None:
        self._transactional = engine
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        # SQLAlchemy's own instrumentation traces and times these: see telemetry/metrics.py.
        self.tracer: Tracer = _UNTRACED
        self.observe: Callable[[str, float], None] | None = None
        self.observe_wait: Callable[[float, bool], None] | None = None

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Statements]:
        """An autocommit connection of the engine's pool."""
        async with self._engine.connect() as connection:
            yield _EngineStatements(connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        """A connection of the engine's pool in a transaction."""
        async with self._transactional.begin() as connection:
            yield _EngineStatements(connection)

    async def read(
        self, statement: Executable, parameters: Mapping[str, Any] = _NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        """One read on a connection of its own."""
        async with self.connect() as connection:
            return await connection.rows(statement, parameters)

    async def close(self) -> None:
        """Nothing of its own to close: the engine is disposed by its owner."""


def statements_of(session: AsyncSession) -> Statements:
    """A session's transaction, to run single statements in it as on an executor's."""
    return _EngineStatements(session)


class _EngineStatements:
    def __init__(self, connection: AsyncConnection | AsyncSession) -> None:
        self._connection = connection

    async def rows(
        self, statement: Executable, parameters: Mapping[str, Any] = _NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        result = await self._connection.execute(statement, parameters)
        if isinstance(result, CursorResult) and not result.returns_rows:
            return []
        return [dict(row._mapping) for row in result]  # noqa: SLF001 -- the public mapping


class AsyncpgExecutor:
    """Statements run by asyncpg itself, on up to ``size`` connections of its own, in turn."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        size: int,
        acquire_timeout: float,
        connect_args: Mapping[str, Any],
    ) -> None:
        self.dialect = engine.dialect
        _, address = self.dialect.create_connect_args(engine.url)
        self._connect = partial(asyncpg.connect, **address, **connect_args)
        self.size = size  # the most connections it opens
        self._acquire_timeout = acquire_timeout
        self._turns = asyncio.Semaphore(size)
        # Free connections with when each was given back, oldest first.
        self._idle: deque[tuple[asyncpg.Connection, float]] = deque()
        self.in_use = 0  # connections lent out right now
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._compiled: dict[Any, _Compiled] = {}
        # By statement object: the ones built once skip hashing their cache key per request.
        self._by_statement: weakref.WeakKeyDictionary[Any, tuple[_Compiled, Any]] = (
            weakref.WeakKeyDictionary()
        )
        # Set by telemetry/: spans, each statement's (SQL, seconds), each wait (seconds, timed out).
        self.tracer: Tracer = _UNTRACED
        self.observe: Callable[[str, float], None] | None = None
        self.observe_wait: Callable[[float, bool], None] | None = None

    async def acquire(self) -> asyncpg.Connection:
        """A connection in turn (a free one, else a new one), or a 503 in time."""
        if self._closed:
            raise _failure(None, ConnectionError(_CLOSED))
        started = time.perf_counter()
        timed_out = False
        try:
            if self._turns.locked():  # wait in turn, for no longer than the pool timeout
                async with asyncio.timeout(self._acquire_timeout):
                    await self._turns.acquire()
            else:
                await self._turns.acquire()  # free: returns at once
            try:
                connection = await self._answering()
            except BaseException:
                self._turns.release()
                raise
        except TimeoutError:
            timed_out = True
            msg = f"no connection was free within {self._acquire_timeout:g} s"
            raise sa_exc.TimeoutError(msg) from None
        except Exception as exc:
            raise _failure(None, exc) from exc
        finally:
            if self.observe_wait is not None:
                self.observe_wait(time.perf_counter() - started, timed_out)
        self.in_use += 1
        return connection

    async def _answering(self) -> asyncpg.Connection:
        """The free connection given back last (one idle a while answers a ping), or a new one."""
        if self._closed:  # also for a request that waited in turn while it closed
            raise ConnectionError(_CLOSED)
        while self._idle:
            connection, since = self._idle.pop()
            if connection.is_closed():
                continue
            if time.monotonic() - since < IDLE_PING_SECONDS:
                return connection
            try:
                await connection.execute("SELECT 1", timeout=PING_TIMEOUT_SECONDS)
            except BaseException as exc:
                connection.terminate()
                if not isinstance(exc, Exception):
                    raise
                logger.info("an idle connection did not answer (%r); taking another", exc)
            else:
                return connection
        # Bounds the codecs' set-up too, not only asyncpg's connect.
        async with asyncio.timeout(self._acquire_timeout):
            connection = await self._connect()
            try:
                # JSON codecs as the dialect's own connections have them.
                adapted = SimpleNamespace(_connection=connection)
                await self.dialect.setup_asyncpg_json_codec(adapted)  # type: ignore[attr-defined]
                await self.dialect.setup_asyncpg_jsonb_codec(adapted)  # type: ignore[attr-defined]
            except BaseException:
                connection.terminate()
                raise
        return connection

    def release(self, connection: asyncpg.Connection, *, reusable: bool = True) -> None:
        """Give ``connection`` back: kept for the next in turn, or closed if not ``reusable``."""
        self.in_use -= 1
        if (
            reusable
            and not self._closed
            and not connection.is_closed()
            and not connection.is_in_transaction()
        ):
            self._idle.append((connection, time.monotonic()))
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._close_idle)
        else:
            connection.terminate()
        self._turns.release()  # the next in turn

    def _close_idle(self) -> None:
        # Closed politely in the background; looks again when the next one will be idle enough.
        self._sweep = None
        now = time.monotonic()
        while self._idle and now - self._idle[0][1] >= IDLE_SECONDS:
            connection, _ = self._idle.popleft()
            closing = asyncio.ensure_future(connection.close(timeout=PING_TIMEOUT_SECONDS))
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)
        if self._idle:
            wait = self._idle[0][1] + IDLE_SECONDS - now
            self._sweep = asyncio.get_running_loop().call_later(wait, self._close_idle)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Statements]:
        """A connection in turn, given back on exit."""
        connection = await self.acquire()
        try:
            yield _AsyncpgStatements(self, connection)
        except BaseException as exc:
            # A request's own failure (a constraint, statement_timeout) leaves it fit to serve;
            # a cancellation, a break or a client-side timeout mid-statement does not.
            reusable = isinstance(exc, Exception) and not unavailability(exc)[1]
            self.release(connection, reusable=reusable)
            raise
        self.release(connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Statements]:
        """A connection in a transaction (BEGIN and COMMIT: two round trips more)."""
        async with self.connect() as statements:
            connection = cast("_AsyncpgStatements", statements).connection
            try:
                async with connection.transaction():
                    yield statements
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise _failure("BEGIN/COMMIT", exc) from exc

    async def read(
        self, statement: Executable, parameters: Mapping[str, Any] = _NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        """One read, run again on a fresh connection if a kept one had been cut (not timed out)."""
        try:
            async with self.connect() as connection:
                return await connection.rows(statement, parameters)
        except DatabaseUnavailableError as exc:
            if not cut(exc):
                raise
            logger.info("a kept connection had broken; the read runs on a fresh one")
        async with self.connect() as connection:
            return await connection.rows(statement, parameters)

    def compiled(self, statement: Executable) -> tuple[_Compiled, Any]:
        """``statement`` compiled for asyncpg (once per shape), and the values it carries."""
        known = self._by_statement.get(statement)
        if known is not None:
            return known
        key = cast("ClauseElement", statement)._generate_cache_key()  # noqa: SLF001 -- its own
        if key is None:
            return _Compiled(statement, self.dialect), None
        found = self._compiled.get(key.key)
        if found is None:
            if len(self._compiled) >= _MAX_COMPILED:
                self._compiled.clear()
            self._compiled[key.key] = found = _Compiled(statement, self.dialect, key)
        self._by_statement[statement] = known = (found, key.bindparams)
        return known

    async def close(self) -> None:
        """Close every connection, once the lent ones are given back."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for _ in range(self.size):  # every turn back: nothing is lent any more
            await self._turns.acquire()
        while self._idle:
            connection, _ = self._idle.popleft()
            await connection.close(timeout=PING_TIMEOUT_SECONDS)
        for _ in range(self.size):  # for a second close
            self._turns.release()


# Chosen by db.py; both have the same methods and telemetry hooks.
Executor = AsyncpgExecutor | EngineExecutor


class _Compiled:
    """A statement compiled once for asyncpg: its SQL, how to bind values, how to read rows."""

    def __init__(self, statement: Executable, dialect: Dialect, key: Any = None) -> None:
        # With the cache key, to take the values another statement of this shape carries.
        compiled = cast("ClauseElement", statement).compile(dialect=dialect, cache_key=key)
        assert isinstance(compiled, SQLCompiler)  # noqa: S101 -- a statement compiles to SQL
        names = compiled.positiontup
        if (
            names is None
            or any(bind.expanding for bind in compiled.binds.values())
            or compiled.insert_prefetch
            or compiled.update_prefetch
        ):
            msg = "only a positional statement with its every value given runs on asyncpg"
            raise ValueError(msg)
        self.sql = str(compiled)
        self.operation = self.sql.split(None, 1)[0].upper() if self.sql else "SQL"
        self.dialect = dialect
        self._compiled = compiled
        self._binds = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        ]
        # asyncpg returns what the dialect's types would; only TypeDecorators convert, unless
        # columns.py marks them ``asyncpg_native``.
        selected = getattr(statement, "selected_columns", ())
        converted = [
            (column.key, column.type)
            for column in selected
            if isinstance(column.type, TypeDecorator)
            and not getattr(column.type, "asyncpg_native", False)
        ]
        labels = [label for label, _ in converted]
        if None in labels or len(set(labels)) != len(labels):
            msg = "label each converted column, uniquely: results are converted by name"
            raise ValueError(msg)
        self._results = [(str(label), kind) for label, kind in converted]

    def arguments(self, parameters: Mapping[str, Any], carried: Any) -> list[Any]:
        """The positional values: given ones and those the statement carries, converted."""
        values = self._compiled.construct_params(parameters, extracted_parameters=carried)
        try:
            return [
                value if process is None else process(value)
                for name, process in self._binds
                for value in (values[name],)
            ]
        except Exception as exc:  # a value its type refuses: SQLAlchemy's error for it
            message = f"({type(exc).__module__}.{type(exc).__name__}) {exc}"
            raise sa_exc.StatementError(message, self.sql, None, exc, hide_parameters=True) from exc

    def convert(self, records: list[asyncpg.Record]) -> list[dict[str, Any]]:
        """Rows by column name, converted by the TypeDecorators."""
        rows = [dict(record.items()) for record in records]
        if not self._results:
            return rows
        for row in rows:
            for key, decorator in self._results:
                row[key] = decorator.process_result_value(row[key], self.dialect)
        return rows


class _AsyncpgStatements:
    def __init__(self, executor: AsyncpgExecutor, connection: asyncpg.Connection) -> None:
        self._executor = executor
        self.connection = connection

    async def rows(
        self, statement: Executable, parameters: Mapping[str, Any] = _NO_PARAMETERS
    ) -> list[dict[str, Any]]:
        executor = self._executor
        compiled, carried = executor.compiled(statement)
        arguments = compiled.arguments(parameters, carried)
        # Named as SQLAlchemy's instrumentation names the sessions' statements.
        span = executor.tracer.start_span(
            compiled.operation,
            kind=SpanKind.CLIENT,
            attributes={"db.system": "postgresql", "db.statement": compiled.sql},
        )
        started = time.perf_counter()
        try:
            records = await self.connection.fetch(compiled.sql, *arguments)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR)
            raise _failure(compiled.sql, exc) from exc
        finally:
            span.end()
            if executor.observe is not None:
                executor.observe(compiled.sql, time.perf_counter() - started)
        return compiled.convert(records)


def _failure(sql: str | None, error: Exception) -> Exception:
    """``error`` of asyncpg as SQLAlchemy would have raised it: unavailable (503), or a fault."""
    unavailable, broken = unavailability(error)
    if unavailable:
        return DatabaseUnavailableError(
            sql, None, error, hide_parameters=True, connection_invalidated=broken
        )
    wrapper = next(wrapper for kind, wrapper in _FAULTS if isinstance(error, kind))
    return wrapper(sql, None, error, hide_parameters=True)
