"""The heroes service's application: ``create_app()``; run with ``python -m regatta.heroes``."""

from __future__ import annotations

from fastapi import FastAPI

from regatta.common.data.migrations import MigrationSpec
from regatta.common.http.app import ServiceSpec
from regatta.common.http.app import create_app as create_service_app
from regatta.heroes.api import HEROES
from regatta.heroes.models import idempotency_keys, outbox
from regatta.heroes.service import SERVICE_NAME
from regatta.heroes.settings import HeroesSettings

SERVICE = ServiceSpec(
    name=SERVICE_NAME,
    migrations=MigrationSpec(
        script_location="regatta.heroes:migrations", version_table="alembic_version_heroes"
    ),
    idempotency_table=idempotency_keys,
    outbox_table=outbox,
    resources=(HEROES,),
)


def create_app(settings: HeroesSettings | None = None) -> FastAPI:
    """The heroes service as an ASGI app."""
    return create_service_app(settings or HeroesSettings(), [SERVICE], title="Regatta heroes")
