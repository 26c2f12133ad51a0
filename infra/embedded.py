"""The embedded default: every service in one process, each under its own prefix.

``make up`` runs this. SQLite in ``./data`` and an in-process cache unless ``DATABASE_URL`` /
``REDIS_URL`` say otherwise; migrations run on start.
"""

from __future__ import annotations

from fastapi import FastAPI

from regatta.common.app import create_app
from regatta.common.serve import serve
from regatta.common.settings import ServiceSettings
from regatta.heroes.main import SERVICE as HEROES
from regatta.items.main import SERVICE as ITEMS


def create_embedded_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Items and heroes in one app."""
    return create_app(settings or ServiceSettings(), [ITEMS, HEROES], title="Regatta")


if __name__ == "__main__":
    serve(create_embedded_app)
