"""The notifications API: ``create_app()``; run with ``python -m regatta.notifications``."""

from __future__ import annotations

from fastapi import FastAPI

from regatta.common.data.migrations import MigrationSpec
from regatta.common.http.app import ServiceSpec
from regatta.common.http.app import create_app as create_service_app
from regatta.notifications.api import router
from regatta.notifications.models import idempotency_keys
from regatta.notifications.service import SERVICE_NAME
from regatta.notifications.settings import NotificationsSettings
from regatta.notifications.worker import WORKERS

SERVICE = ServiceSpec(
    name=SERVICE_NAME,
    router=router,
    migrations=MigrationSpec(
        script_location="regatta.notifications:migrations",
        version_table="alembic_version_notifications",
    ),
    idempotency_table=idempotency_keys,
    workers=WORKERS,
)


def create_app(settings: NotificationsSettings | None = None) -> FastAPI:
    """The notifications service as an ASGI app."""
    return create_service_app(
        settings or NotificationsSettings(), [SERVICE], title="Regatta notifications"
    )
