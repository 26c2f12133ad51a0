"""The async engine, the session factory and the session dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from regatta.common.settings import ServiceSettings


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
        },
        "timeout": settings.db_pool_timeout_seconds,
    }
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
        # Errors (and so log lines) show statements but never values: a value may be a secret.
        hide_parameters=True,
    )


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


class Database:
    """The engine and its session factory, created in the lifespan and closed at shutdown."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # expire_on_commit=False: objects stay readable after commit without a lazy reload.
        self.sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @property
    def dialect(self) -> str:
        """The backend name: ``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def get_database(request: Request) -> Database:
    """The application's database (async: FastAPI runs plain ``def`` dependencies in threads)."""
    database: Database = request.app.state.database
    return database


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; the service decides where transactions begin and end."""
    database: Database = request.app.state.database
    async with database.sessions() as session:
        yield session


DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
