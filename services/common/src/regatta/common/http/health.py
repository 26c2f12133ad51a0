"""Liveness, readiness and the shutdown flag that turns readiness off the moment SIGTERM lands."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

logger = logging.getLogger("regatta.health")

READINESS_TIMEOUT_SECONDS = 2.0
_Handler = Callable[[int, FrameType | None], Any]
_NO_STORE = {"Cache-Control": "no-store"}


class Lifecycle:
    """What readiness needs to know: the dependency checks and whether shutdown has begun."""

    def __init__(self) -> None:
        self.checks: dict[str, Callable[[], Awaitable[Any]]] = {}
        self.shutting_down = False
        self._replaced: dict[int, _Handler] = {}

    def begin_shutdown(self) -> None:
        """Mark the process as draining: readiness answers 503 from now on."""
        if not self.shutting_down:
            logger.info("shutdown begun: readiness now answers 503")
        self.shutting_down = True

    def watch_signals(self) -> None:
        """Chain onto the server's SIGTERM/SIGINT handlers so readiness flips before draining."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (an embedding test harness, say)
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue  # nobody handles it in Python: the process just dies, nothing to chain.

            def handler(sig: int, frame: FrameType | None, previous: _Handler = previous) -> None:
                self.begin_shutdown()
                previous(sig, frame)

            self._replaced[signum] = previous
            signal.signal(signum, handler)

    def restore_signals(self) -> None:
        """Put back the handlers ``watch_signals`` wrapped."""
        for signum, previous in self._replaced.items():
            signal.signal(signum, previous)
        self._replaced.clear()

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Run every check concurrently, each under a timeout."""
        if self.shutting_down:
            return False, {"shutdown": "in progress"}
        names = list(self.checks)
        results = await asyncio.gather(
            *(asyncio.wait_for(self.checks[n](), READINESS_TIMEOUT_SECONDS) for n in names),
            return_exceptions=True,
        )
        report = {
            name: "ok" if not isinstance(result, BaseException) else "unavailable"
            for name, result in zip(names, results, strict=True)
        }
        return all(value == "ok" for value in report.values()), report


def health_router(lifecycle: Lifecycle) -> APIRouter:
    """``/livez`` (and ``/healthz``) and ``/readyz``, the latter answering for ``lifecycle``."""
    router = APIRouter(tags=["health"])

    @router.get("/livez", include_in_schema=False)
    @router.get("/healthz", include_in_schema=False)
    async def livez() -> JSONResponse:
        """Alive while the event loop turns; never looks at dependencies."""
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Ready when every dependency answers and shutdown has not begun."""
        ready, report = await lifecycle.readiness()
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": report},
            status_code=200 if ready else 503,
            headers=_NO_STORE,
        )

    return router
