"""Traces: a request's spans reach the database and Redis, and the webhook it causes joins it."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from pydantic import SecretStr
from sqlalchemy import Select, event, literal_column, select

from regatta.common.data.db import create_database
from regatta.common.data.executor import AsyncpgExecutor
from regatta.common.http.context import platform_of
from regatta.common.settings import Environment, ServiceSettings
from regatta.common.telemetry import tracing
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import client_for
from tests.eventually import eventually
from tests.notifications.receiver import Receiver, run_receiver
from tests.observability.conftest import Spans, TracedAppFactory


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def descends_from(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


async def test_a_create_traces_through_the_database_redis_and_the_webhook_it_causes(
    start_traced: TracedAppFactory, spans: Spans, settings: NotificationsSettings
) -> None:
    async with run_receiver() as receiver, start_traced() as app, client_for(app) as client:
        subscribed = await client.post(
            "/notifications/subscriptions", json={"event": "item.created", "url": receiver.url()}
        )
        assert subscribed.status_code == 201
        created = await client.post("/items", json={"name": "Traced", "price": 3})
        assert created.status_code == 201
        assert (await client.get(created.headers["location"])).status_code == 200

        async def delivered() -> bool:
            return len(receiver.requests) == 1

        await eventually(delivered)
        await eventually(lambda: _delivery_recorded(spans))

    request = only(spans.finished(), "POST /items")
    assert request.kind is SpanKind.SERVER
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/items"
    trace = spans.in_trace(request.context.trace_id)

    database = [s for s in trace if s.attributes and "db.system" in s.attributes]
    sql = [s for s in database if s.attributes and s.attributes["db.system"] != "redis"]
    assert any(descends_from(s, request, trace) and s.kind is SpanKind.CLIENT for s in sql)
    if settings.redis_url is not None:
        # The first read looks the new item up in the cache, then fills it: Redis spans.
        read = only(spans.finished(), "GET /items/{item_id}")
        in_read = spans.in_trace(read.context.trace_id)
        redis = [s for s in in_read if s.attributes and s.attributes.get("db.system") == "redis"]
        assert len(redis) >= 2, "the cache read and fill are Redis spans of the request"
        assert all(descends_from(s, read, in_read) for s in redis)

    # The event leaves through the outbox and the stream, and the delivery joins the trace.
    publish = only(trace, "publish item.created")
    receive = only(trace, "receive item.created")
    deliver = only(trace, "deliver webhook")
    assert descends_from(publish, request, trace)
    assert descends_from(receive, publish, trace)
    assert descends_from(deliver, receive, trace)
    webhook = only(trace, "POST")
    assert webhook.kind is SpanKind.CLIENT
    assert descends_from(webhook, deliver, trace)
    # The receiver can join it too: the webhook carries the trace context.
    traceparent = receiver.requests[0].headers["traceparent"]
    assert traceparent.split("-")[1] == f"{request.context.trace_id:032x}"


async def _delivery_recorded(spans: Spans) -> bool:
    return any(span.name == "deliver webhook" for span in spans.finished())


async def test_a_direct_notification_delivery_joins_the_request_trace(
    start_traced: TracedAppFactory, spans: Spans
) -> None:
    async with run_receiver() as receiver, start_traced() as app, client_for(app) as client:
        accepted = await client.post(
            "/notifications",
            json={"channel": "webhook", "url": receiver.url(), "payload": {"n": 1}},
        )
        assert accepted.status_code == 202
        await eventually(lambda: _delivery_recorded(spans))
    request = only(spans.finished(), "POST /notifications")
    deliver = only(spans.finished(), "deliver webhook")
    assert deliver.context.trace_id == request.context.trace_id
    assert _received_in_trace(receiver, request.context.trace_id)


def _received_in_trace(receiver: Receiver, trace_id: int) -> bool:
    return all(
        r.headers["traceparent"].split("-")[1] == f"{trace_id:032x}" for r in receiver.requests
    )


async def test_background_polling_starts_no_traces(
    start_traced: TracedAppFactory, spans: Spans
) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    async with start_traced() as app, client_for(app) as client:
        event.listen(
            platform_of(app).serving.database.engine.sync_engine, "before_cursor_execute", count
        )

        async def polled() -> bool:
            # The relay and the delivery worker query every few tens of milliseconds.
            return len(statements) > 20

        assert (await client.get("/items")).status_code == 200
        await eventually(polled)
    roots = [span for span in spans.finished() if span.parent is None]
    assert [span.name for span in roots] == ["GET /items"]


async def test_without_a_provider_nothing_is_instrumented(settings: NotificationsSettings) -> None:
    from embedded import create_embedded_app  # noqa: PLC0415

    app = create_embedded_app(settings)
    assert platform_of(app).tracer_provider is None
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)


@pytest.mark.postgres
async def test_statements_run_the_same_way_traced_or_not(postgres_url: str, spans: Spans) -> None:
    """Tracing adds spans to the resources' statements; it does not change how they run."""
    settings = ServiceSettings(environment=Environment.TEST, database_url=SecretStr(postgres_url))
    statement: Select[Any] = select(literal_column("1").label("one"))
    for traced in (False, True):
        database = create_database(settings)
        if traced:
            tracing.trace_database(database, spans.provider)
        ran: list[str] = []
        event.listen(database.engine.sync_engine, "before_cursor_execute", ran.append)
        try:
            # asyncpg runs them itself, with tracing on or off
            assert isinstance(database.statements, AsyncpgExecutor)
            # Inside a request's span: a client span with no parent is not recorded.
            with spans.provider.get_tracer("test").start_as_current_span("request"):
                assert await database.read(statement, {}) == [{"one": 1}]
        finally:
            await database.close()
        assert ran == []  # not through SQLAlchemy's execution, either way
        selects = [span for span in spans.finished() if span.name == "SELECT"]
        assert len(selects) == (1 if traced else 0)
    (span,) = selects
    assert span.kind is SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["db.system"] == "postgresql"
