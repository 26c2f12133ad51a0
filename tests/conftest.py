"""Fixtures shared by the cross-cutting suites: the platform on each backend, and clients."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from embedded import create_embedded_app
from regatta.common.settings import Environment
from regatta.notifications.settings import NotificationsSettings
from tests.lifespan import lifespan

BACKENDS = ["embedded", pytest.param("postgres", marks=pytest.mark.postgres)]

AppFactory = Callable[..., AbstractAsyncContextManager[FastAPI]]


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> NotificationsSettings:
    """Test settings for each backend: SQLite + memory cache, or Postgres + Redis."""
    if request.param == "embedded":
        return NotificationsSettings(
            environment=Environment.TEST,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/regatta.db",
        )
    return NotificationsSettings(
        environment=Environment.TEST,
        database_url=request.getfixturevalue("postgres_url"),
        redis_url=request.getfixturevalue("redis_url"),
        redis_key_prefix=f"t{uuid.uuid4().hex[:8]}:",
    )


@pytest.fixture
def start_app(settings: NotificationsSettings) -> AppFactory:
    """Start an embedded app (lifespan included) on the test's backend, with overrides."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[FastAPI]:
        app = create_embedded_app(settings.model_copy(update=overrides))
        async with lifespan(app):
            yield app

    return start


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to ``app`` in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://regatta.test") as client:
        yield client


@pytest.fixture
async def client(start_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the platform on the test's backend."""
    async with start_app() as app, client_for(app) as http:
        yield http
