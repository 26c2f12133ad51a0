"""The migration command a Kubernetes Job runs: waits for the database, migrates, is re-runnable."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

SERVICES = {
    "items": {"items", "items_idempotency_keys", "alembic_version_items"},
    "heroes": {"heroes", "heroes_idempotency_keys", "alembic_version_heroes"},
}


def migrate(service: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"regatta.{service}.migrate"],
        env={**os.environ, "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def table_names(database_url: str) -> set[str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_both_services_migrate_one_database_and_rerun_cleanly(postgres_url: str) -> None:
    for service in SERVICES:
        first = migrate(service, postgres_url)
        assert first.returncode == 0, first.stderr
        again = migrate(service, postgres_url)
        assert again.returncode == 0, again.stderr
    assert set().union(*SERVICES.values()) <= await table_names(postgres_url)


async def test_sqlite_migrates_too(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/m.db"
    result = migrate("items", url)
    assert result.returncode == 0, result.stderr
    assert SERVICES["items"] <= await table_names(url)


def test_gives_up_when_the_database_never_answers() -> None:
    started = time.monotonic()
    result = migrate(
        "items",
        "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        MIGRATE_WAIT_SECONDS="2",
    )
    assert result.returncode != 0
    assert "retrying" in result.stderr
    assert time.monotonic() - started < 60
