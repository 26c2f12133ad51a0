"""The database of a process: the executor of its resources' statements, the ORM sessions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from regatta.common.data.executor import AsyncpgExecutor, EngineExecutor, Executor
from regatta.common.data.failures import DatabaseUnavailableError, unavailability
from regatta.common.settings import ServiceSettings

# Plans that see the values, and no parallel workers for a page: tests/plans pins what they buy.
PLANNER_SETTINGS = {"plan_cache_mode": "force_custom_plan", "max_parallel_workers_per_gather": "0"}

# Beside the executor, sessions run only background work (relay, purge, readiness probe).
BACKGROUND_SESSIONS = 2
# Only a connection idle this long is pinged: pool_pre_ping costs three round trips a checkout.
IDLE_PING_SECONDS = 10.0


def split_pool(size: int, *, statements: bool = True, sessions: bool = True) -> tuple[int, int]:
    """``DB_POOL_SIZE`` on Postgres as (executor, sessions) connections, at least one each used."""
    if not statements:
        return 0, size
    executor = size // 2 if sessions else size - min(BACKGROUND_SESSIONS, size // 2)
    return max(1, executor), max(1, size - executor)


def connect_args(settings: ServiceSettings) -> dict[str, Any]:
    """Asyncpg's connection settings, the same for the engine's pool and the executor's."""
    return {
        "server_settings": {
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "application_name": "regatta",
            **PLANNER_SETTINGS,
            # Keepalives well inside a NAT's or firewall's idle timeout, as for Redis.
            "tcp_keepalives_idle": "30",
            "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "3",
        },
        # (Re)connecting may take no longer than waiting for a pooled connection.
        "timeout": settings.db_pool_timeout_seconds,
        "command_timeout": settings.db_command_timeout_seconds,
    }


def create_engine(settings: ServiceSettings, *, pool_size: int | None = None) -> AsyncEngine:
    """Build the engine: a sized asyncpg pool for Postgres, WAL-mode aiosqlite for SQLite."""
    url = make_url(settings.database_url.get_secret_value())
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
        connect_args=connect_args(settings),
        # Errors (and so log lines) show statements but never values: a value may be a secret.
        hide_parameters=True,
    )
    event.listen(engine.sync_engine, "handle_error", _classify_unavailable)
    event.listen(engine.sync_engine.pool, "checkin", _note_checkin)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return engine


def create_database(
    settings: ServiceSettings, *, statements: bool = True, sessions: bool = True
) -> Database:
    """The process's database: on Postgres, an executor beside the sessions' engine."""
    executor_size, sessions_size = split_pool(
        settings.db_pool_size, statements=statements, sessions=sessions
    )
    engine = create_engine(settings, pool_size=sessions_size)
    if settings.uses_sqlite or not executor_size:
        return Database(engine)
    executor = AsyncpgExecutor(
        engine,
        size=executor_size,
        acquire_timeout=settings.db_pool_timeout_seconds,
        connect_args=connect_args(settings),
    )
    return Database(engine, executor)


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


def _classify_unavailable(context: ExceptionContext) -> BaseException | None:
    """SQLAlchemy's errors told apart by :func:`unavailability`; a broken connection dropped."""
    unavailable, broken = unavailability(context.original_exception)
    if not unavailable:
        return None
    if broken:
        context.is_disconnect = True  # the pool drops it, and every connection older than it
    return DatabaseUnavailableError(
        context.statement,
        None,
        context.original_exception,
        hide_parameters=True,
        connection_invalidated=context.is_disconnect,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    # WAL: readers beside the one writer; busy_timeout: writers queue, not "database is locked".
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


class Database:
    """The executor of the resources' statements, and the engine with its sessions."""

    def __init__(self, engine: AsyncEngine, statements: Executor | None = None) -> None:
        self.engine = engine
        # expire_on_commit=False: objects stay readable after commit without a lazy reload.
        self.sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self.statements: Executor = statements or EngineExecutor(engine)
        # The executor's: single statements (each its own transaction), a transaction, a read.
        self.connect = self.statements.connect
        self.transaction = self.statements.transaction
        self.read = self.statements.read

    @property
    def dialect(self) -> str:
        """The backend name: ``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Close the executor's connections, then every pooled connection."""
        await self.statements.close()
        await self.engine.dispose()
