"""Run an app with uvicorn as the platform expects: one process, uvloop, httptools, a drain."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from regatta.common.http.context import platform_of
from regatta.common.http.health import Lifecycle
from regatta.common.telemetry.logs import configure_logging

logger = logging.getLogger("regatta.serve")


class DrainingServer(uvicorn.Server):
    """Uvicorn, with readiness off and a pause between the stop signal and the drain."""

    def __init__(self, config: uvicorn.Config, *, lifecycle: Lifecycle, delay: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.delay = delay
        self._signalled: tuple[int, float] | None = None  # (signal, when the drain starts)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Turn readiness off; drain now, or once the delay has passed."""
        self.lifecycle.begin_shutdown()
        if self.delay > 0 and self._signalled is None and not self.should_exit:
            logger.info("stop signal: serving %.1fs more with readiness off", self.delay)
            self._signalled = (sig, time.monotonic() + self.delay)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Start the drain when the delay is over."""
        if self._signalled is not None and not self.should_exit:
            sig, drain_at = self._signalled
            if time.monotonic() >= drain_at:
                super().handle_exit(sig, None)
        return await super().on_tick(counter)


def serve(create_app: Callable[[], FastAPI]) -> None:
    """Build the app and serve it until SIGTERM/SIGINT, draining in-flight requests."""
    app = create_app()
    platform = platform_of(app)
    settings = platform.settings
    configure_logging(
        level=settings.log_level, log_format=settings.log_format, service=platform.service_name
    )
    if platform.tracer_provider is not None:
        logger.info("tracing on, as the OTEL_* variables configure it")
    # One process per pod (or per laptop): scale with replicas, so metrics stay per process.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=settings.keepalive_seconds,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        proxy_headers=True,
        # The same peers the rate limiter believes (TRUSTED_PROXIES), not uvicorn's own default.
        forwarded_allow_ips=[str(network) for network in settings.trusted_proxies],
        access_log=False,
        log_config=None,
    )
    server = DrainingServer(
        config, lifecycle=platform.lifecycle, delay=settings.shutdown_delay_seconds
    )
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run does: a failed startup is not a clean exit
