"""An app's lifespan, run in-process by the tests: one start-up and shutdown allowance for all.

asgi-lifespan gives start-up five seconds by default. An embedded app migrates three services
on SQLite as it starts (well under a second alone), and on a machine whose disk is busy with
image builds one start took longer: a failure of the machine, not of the app. A hang still
fails, after a minute here or at pytest-timeout's limit.
"""

from __future__ import annotations

from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

START_SECONDS = 60.0
STOP_SECONDS = 60.0


def lifespan(app: ASGIApp) -> LifespanManager:
    """``async with lifespan(app) as manager:``: the app started, then stopped on exit."""
    return LifespanManager(app, startup_timeout=START_SECONDS, shutdown_timeout=STOP_SECONDS)
