"""Pooled connections of the engine (sessions) the database dropped or timed out."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import (
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from regatta.common.data import db
from regatta.common.data.failures import DatabaseUnavailableError
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
        with pytest.raises(DatabaseUnavailableError):
            await backend_pid(engine)  # not pinged: the statement meets the dropped connection
        second = await backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()
