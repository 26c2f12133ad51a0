"""Alembic, per service, on the async engine: run in the lifespan (embedded) or as a Job."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData
from sqlalchemy import exc as sa_exc

from regatta.common.data.db import create_engine
from regatta.common.settings import ServiceSettings

logger = logging.getLogger("regatta.migrations")


@dataclass(frozen=True, slots=True)
class MigrationSpec:
    """Where a service's revisions live and which version table records them."""

    script_location: str  # e.g. "regatta.items:migrations"
    version_table: str  # one per service, so services can share a database


def upgrade_sync(connection: Connection, spec: MigrationSpec) -> None:
    """Upgrade to head on an open connection (run through ``AsyncConnection.run_sync``)."""
    config = Config()
    config.set_main_option("script_location", spec.script_location)
    # Read back by run_env in the service's env.py.
    config.attributes.update(connection=connection, version_table=spec.version_table)
    command.upgrade(config, "head")


async def upgrade(settings: ServiceSettings, specs: list[MigrationSpec]) -> None:
    """Upgrade every service's schema to head on the configured database."""
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Two processes starting at once must not both migrate.
                await connection.exec_driver_sql("SELECT pg_advisory_xact_lock(72177)")
            for spec in specs:
                logger.info("migrating %s", spec.script_location)
                await connection.run_sync(upgrade_sync, spec)
    finally:
        await engine.dispose()


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's ``env.py``: online migrations on a provided connection."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        msg = "run migrations with `python -m regatta.<service>.migrate`, which provides them"
        raise RuntimeError(msg)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def wait_for_database(settings: ServiceSettings, *, timeout_seconds: float) -> None:
    """Retry until the database answers: a Job started beside a new Postgres must not fail."""
    engine = create_engine(settings)
    deadline = time.monotonic() + timeout_seconds
    delay = 0.5
    try:
        while True:
            try:
                async with engine.connect() as connection:
                    await connection.exec_driver_sql("SELECT 1")
            except (OSError, sa_exc.OperationalError, sa_exc.InterfaceError, TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.info("database not ready (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                return
    finally:
        await engine.dispose()


def main(settings: ServiceSettings, specs: list[MigrationSpec]) -> None:
    """Command-line entry: wait for the database, migrate and exit (the hook Job runs this)."""
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s %(message)s")
    asyncio.run(wait_for_database(settings, timeout_seconds=settings.migrate_wait_seconds))
    asyncio.run(upgrade(settings, specs))
    logger.info("migrations complete")
