"""Fixtures of the observability suites: traced apps, captured log lines, Prometheus binaries."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from regatta.common.http.app import create_app
from regatta.common.telemetry.logs import JsonFormatter
from regatta.common.telemetry.tracing import sampler_from_environment
from regatta.heroes.main import SERVICE as HEROES
from regatta.items.main import SERVICE as ITEMS
from regatta.notifications.main import SERVICE as NOTIFICATIONS
from regatta.notifications.settings import NotificationsSettings
from tests.lifespan import lifespan

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"

FAST_DELIVERY = {
    "delivery_backoff_base_seconds": 0.05,
    "delivery_backoff_max_seconds": 0.2,
    "worker_poll_seconds": 0.05,
    "webhook_allowed_networks": ["127.0.0.0/8"],
    "webhook_timeout_seconds": 3,
}


def unavailable(reason: str) -> NoReturn:
    """Skip locally, fail in CI, where a missing tool is a broken machine."""
    if os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def binary(name: str) -> str:
    """The path of a Prometheus tool, or skip (fail under CI) saying how to install it."""
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not on PATH; install it with: apt-get install prometheus")
    return found


class Spans:
    """A tracer provider whose finished spans stay in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        # The sampler production builds from OTEL_* (here: the defaults).
        self.provider = TracerProvider(sampler=sampler_from_environment({}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def in_trace(self, trace_id: int) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.context.trace_id == trace_id]


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorded = Spans()
    yield recorded
    recorded.provider.shutdown()


class TracedAppFactory(Protocol):
    def __call__(self, **overrides: Any) -> AbstractAsyncContextManager[FastAPI]: ...


@pytest.fixture
def start_traced(settings: NotificationsSettings, spans: Spans) -> TracedAppFactory:
    """Start the three services in one traced app (lifespan and in-process worker included)."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[FastAPI]:
        app = create_app(
            settings.model_copy(update={**FAST_DELIVERY, **overrides}),
            [ITEMS, HEROES, NOTIFICATIONS],
            title="Regatta",
            run_workers=True,
            tracer_provider=spans.provider,
        )
        async with lifespan(app):
            yield app

    return start


class LogLines(logging.Handler):
    """Every record, rendered by the production formatter, parsed back from JSON."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter("regatta"))
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.raw.append(self.format(record))

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.parsed() if line.get("event") == event]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    handler = LogLines()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
