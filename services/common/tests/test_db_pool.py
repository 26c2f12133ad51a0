"""Pooled connections the database dropped: an idle one is replaced unseen, a busy one once."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from regatta.common import db
from regatta.common.settings import Environment, ServiceSettings

pytestmark = pytest.mark.postgres


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(postgres_url: str, pid: int) -> None:
    admin = create_async_engine(make_url(postgres_url))
    try:
        async with admin.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await admin.dispose()


@pytest.fixture
def engine(postgres_url: str) -> AsyncEngine:
    settings = ServiceSettings(
        environment=Environment.TEST, database_url=SecretStr(postgres_url), db_pool_size=1
    )
    return db.create_engine(settings)


async def test_an_idle_connection_is_pinged_and_replaced(
    engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    try:
        first = await backend_pid(engine)
        await terminate(postgres_url, first)
        second = await backend_pid(engine)  # no error: the ping found it dead
        assert second != first
    finally:
        await engine.dispose()


async def test_a_busy_connection_fails_once_as_unavailable_then_recovers(
    engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
    try:
        first = await backend_pid(engine)
        await terminate(postgres_url, first)
        with pytest.raises(db.DatabaseUnavailableError):
            await backend_pid(engine)  # not pinged: the statement meets the dropped connection
        second = await backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()
