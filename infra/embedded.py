"""The embedded default: every service in one process, each under its own prefix.

``make up`` runs this. SQLite in ``./data``, an in-process cache and event stream unless
``DATABASE_URL`` / ``REDIS_URL`` say otherwise; migrations run on start; the notifications
worker and the outbox relays run inside the same process.
"""

from __future__ import annotations

from fastapi import FastAPI

from regatta.common.http.app import create_app
from regatta.common.http.serve import serve
from regatta.heroes.main import SERVICE as HEROES
from regatta.items.main import SERVICE as ITEMS
from regatta.notifications.main import SERVICE as NOTIFICATIONS
from regatta.notifications.settings import NotificationsSettings


def create_embedded_app(settings: NotificationsSettings | None = None) -> FastAPI:
    """Items, heroes and notifications in one app, with the delivery worker inside it."""
    return create_app(
        settings or NotificationsSettings(),
        [ITEMS, HEROES, NOTIFICATIONS],
        title="Regatta",
        run_workers=True,
    )


if __name__ == "__main__":
    serve(create_embedded_app)
