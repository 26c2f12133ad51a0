"""Run an app with uvicorn as the platform expects: one process, uvloop, httptools."""

from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from regatta.common.logs import configure_logging
from regatta.common.settings import ServiceSettings

logger = logging.getLogger("regatta.serve")


def serve(create_app: Callable[[], FastAPI]) -> None:
    """Build the app and serve it until SIGTERM/SIGINT, draining in-flight requests."""
    app = create_app()
    settings: ServiceSettings = app.state.settings
    configure_logging(
        level=settings.log_level,
        log_format=settings.log_format,
        service=app.state.service_name,
    )
    if app.state.tracer_provider is not None:
        logger.info("tracing on, as the OTEL_* variables configure it")
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
