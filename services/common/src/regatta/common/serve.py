"""Run an app with uvicorn as the platform expects: one process, uvloop, httptools."""

from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from regatta.common.settings import ServiceSettings


def serve(create_app: Callable[[], FastAPI]) -> None:
    """Build the app and serve it until SIGTERM/SIGINT, draining in-flight requests."""
    app = create_app()
    settings: ServiceSettings = app.state.settings
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # One process per pod (or per laptop): scale with replicas, so metrics stay per process.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=settings.keepalive_seconds,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        proxy_headers=True,
        access_log=False,
        log_config=None,
    )
