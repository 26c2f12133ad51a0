"""The items service's application: ``create_app()``; run with ``python -m regatta.items``."""

from __future__ import annotations

from fastapi import FastAPI

from regatta.common.data.migrations import MigrationSpec
from regatta.common.http.app import ServiceSpec
from regatta.common.http.app import create_app as create_service_app
from regatta.items.api import ITEMS
from regatta.items.models import idempotency_keys, outbox
from regatta.items.service import SERVICE_NAME
from regatta.items.settings import ItemsSettings

SERVICE = ServiceSpec(
    name=SERVICE_NAME,
    migrations=MigrationSpec(
        script_location="regatta.items:migrations", version_table="alembic_version_items"
    ),
    idempotency_table=idempotency_keys,
    outbox_table=outbox,
    resources=(ITEMS,),
)


def create_app(settings: ItemsSettings | None = None) -> FastAPI:
    """The items service as an ASGI app."""
    return create_service_app(settings or ItemsSettings(), [SERVICE], title="Regatta items")
