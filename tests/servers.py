"""Pytest plugin: private Postgres and Redis servers for the test session (infra/local/daemons)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import NoReturn

import pytest
from daemons import (
    DaemonUnavailableError,
    PostgresServer,
    RedisServer,
    find_postgres_bindir,
    find_redis,
    postgres_os_user,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["PostgresServer", "RedisServer", "Terminate"]

# What the terminate_backend fixture gives: end the server process with this pid.
Terminate = Callable[[int], Awaitable[None]]


def unavailable(error: DaemonUnavailableError) -> NoReturn:
    """Skip locally, but fail under CI: a CI run must never silently skip these suites."""
    if os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}:
        pytest.fail(str(error), pytrace=False)
    pytest.skip(str(error))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Run a private Postgres cluster for the whole test session."""
    try:
        server = PostgresServer(find_postgres_bindir(), postgres_os_user())
    except DaemonUnavailableError as error:
        unavailable(error)
    with server:
        try:
            server.start()
        except DaemonUnavailableError as error:
            unavailable(error)
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """Create a fresh empty database for one test; yield its SQLAlchemy URL."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def terminate_backend(postgres_url: str) -> Terminate:
    """End one server process of the test's database, as a restart or a proxy's cut would."""

    async def terminate(pid: int) -> None:
        admin = create_async_engine(make_url(postgres_url))
        try:
            async with admin.connect() as connection:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await admin.dispose()

    return terminate


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Run a private Redis server for the whole test session."""
    try:
        executable = find_redis()
    except DaemonUnavailableError as error:
        unavailable(error)
    with RedisServer(executable) as server:
        server.start()
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """Return the URL of an empty Redis, restarting it if a test stopped it."""
    redis_server.start()
    redis_server.flushall()
    return redis_server.url()
