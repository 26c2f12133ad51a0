"""Log lines: one JSON object per request and per delivery, correlated, and never a secret."""

from __future__ import annotations

import logging
import re
from datetime import datetime

import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from regatta.common.data.db import create_engine
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import client_for
from tests.eventually import eventually
from tests.observability.conftest import OBSERVABILITY, LogLines, Spans, TracedAppFactory

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
REQUEST_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "service",
    "trace_id",
    "span_id",
    "request_id",
    "route",
    "method",
    "path",
    "status",
    "duration_ms",
}


async def test_a_request_leaves_one_json_line_carrying_its_trace(
    start_traced: TracedAppFactory, spans: Spans, log_lines: LogLines
) -> None:
    async with start_traced() as app, client_for(app) as client:
        response = await client.get(
            "/items/12345", headers={"traceparent": TRACEPARENT, "X-Request-ID": "req-42"}
        )
    assert response.status_code == 404
    lines = [line for line in log_lines.events("request") if line["request_id"] == "req-42"]
    assert len(lines) == 1
    line = lines[0]
    assert set(line) >= REQUEST_FIELDS
    assert line["service"] == "items"
    assert line["route"] == "/items/{item_id}"
    assert line["path"] == "/items/12345"
    assert line["method"] == "GET"
    assert line["status"] == 404
    assert line["duration_ms"] > 0
    assert line["level"] == "INFO"
    assert datetime.fromisoformat(line["time"]).utcoffset() is not None
    # The server span continued the caller's trace, and the line names that span.
    server = next(s for s in spans.finished() if s.name == "GET /items/{item_id}")
    assert line["trace_id"] == TRACE_ID == f"{server.context.trace_id:032x}"
    assert line["span_id"] == f"{server.context.span_id:016x}"
    assert server.attributes is not None
    assert server.attributes["regatta.request_id"] == "req-42"
    raw = next(r for r in log_lines.raw if '"req-42"' in r and '"request"' in r)
    assert "\n" not in raw


async def test_a_delivery_leaves_one_json_line_in_the_trace_of_its_request(
    start_traced: TracedAppFactory, spans: Spans, log_lines: LogLines
) -> None:
    async with start_traced() as app, client_for(app) as client:
        accepted = await client.post(
            "/notifications",
            json={"channel": "email", "to": "ada@example.com", "subject": "Hi", "body": "Hello"},
        )
        assert accepted.status_code == 202

        async def delivered() -> bool:
            return bool(log_lines.events("delivery"))

        await eventually(delivered)
    request = next(s for s in spans.finished() if s.name == "POST /notifications")
    deliver = next(s for s in spans.finished() if s.name == "deliver email")
    (line,) = log_lines.events("delivery")
    assert line["trace_id"] == f"{request.context.trace_id:032x}"
    assert line["span_id"] == f"{deliver.context.span_id:016x}"
    assert line["notification_id"] == accepted.json()["id"]
    assert line["channel"] == "email"
    assert line["outcome"] == "delivered"
    assert line["attempt"] == 1
    assert line["target"] == "example.com"
    assert line["duration_ms"] >= 0


async def test_no_line_ever_holds_a_key_a_secret_name_or_an_email_body(
    start_traced: TracedAppFactory, log_lines: LogLines
) -> None:
    key = "k3y-that-must-not-leak"
    secret_name = "Secret Identity 7f3a"
    body = "Body text that must not leak 91c2"
    async with start_traced(api_keys=[SecretStr(key)]) as app, client_for(app) as client:
        auth = {"Authorization": f"Bearer {key}"}
        hero = await client.post(
            "/heroes", json={"name": "Masked", "secret_name": secret_name}, headers=auth
        )
        assert hero.status_code == 201
        refused = await client.post(
            "/heroes",
            json={"name": "X", "secret_name": secret_name},
            headers={"Authorization": "Bearer wrong-k3y"},
        )
        assert refused.status_code == 403
        mail = await client.post(
            "/notifications",
            json={"channel": "email", "to": "bo@example.com", "subject": "S", "body": body},
            headers=auth,
        )
        assert mail.status_code == 202

        async def delivered() -> bool:
            return bool(log_lines.events("delivery"))

        await eventually(delivered)
    output = "\n".join(log_lines.raw)
    assert log_lines.events("request")
    for secret in (key, "wrong-k3y", secret_name, body):
        assert secret not in output
    # A complaint about a request can be traced to its key by the key's id, never the key.
    created = next(line for line in log_lines.events("request") if line["status"] == 201)
    assert re.fullmatch(r"key-[0-9a-f]{16}", created["api_key_id"])
    forbidden = next(line for line in log_lines.events("request") if line["status"] == 403)
    assert "api_key_id" not in forbidden


@pytest.mark.parametrize("rate_limit_enabled", [False, True])
async def test_a_request_line_names_the_client_its_key_and_the_bytes_sent(
    start_traced: TracedAppFactory, log_lines: LogLines, *, rate_limit_enabled: bool
) -> None:
    key = "an-api-key-for-the-log"
    async with (
        start_traced(api_keys=[SecretStr(key)], rate_limit_enabled=rate_limit_enabled) as app,
        client_for(app) as client,
    ):
        keyed = await client.get("/items", headers={"Authorization": f"Bearer {key}"})
        anonymous = await client.get("/items/424242")
    keyed_line, anonymous_line = (
        next(line for line in log_lines.events("request") if line["path"] == path)
        for path in ("/items", "/items/424242")
    )
    assert keyed_line["client"] == anonymous_line["client"] == "127.0.0.1"
    assert keyed_line["api_key_id"].startswith("key-")
    assert key not in "\n".join(log_lines.raw)
    assert "api_key_id" not in anonymous_line
    assert keyed_line["response_bytes"] == len(keyed.content)
    assert anonymous_line["response_bytes"] == len(anonymous.content)


def test_grafana_turns_the_trace_id_of_a_real_line_into_a_trace_link() -> None:
    provisioning = yaml.safe_load(
        (OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "regatta.yaml").read_text()
    )
    loki = next(d for d in provisioning["datasources"] if d["type"] == "loki")
    (field,) = loki["jsonData"]["derivedFields"]
    tempo = next(d for d in provisioning["datasources"] if d["type"] == "tempo")
    assert field["datasourceUid"] == tempo["uid"]
    handler = LogLines()
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags  # noqa: PLC0415

    context = SpanContext(
        int(TRACE_ID, 16), 0x00F067AA0BA902B7, is_remote=False, trace_flags=TraceFlags(1)
    )
    record = logging.LogRecord("regatta.access", logging.INFO, __file__, 1, "GET /x", (), None)
    with trace.use_span(NonRecordingSpan(context)):
        handler.emit(record)
    # Grafana's matcher is an RE2 expression; this one means the same in Python.
    match = re.search(field["matcherRegex"], handler.raw[0])
    assert match is not None
    assert match.group(1) == TRACE_ID


async def test_database_errors_name_the_statement_but_never_its_values(
    settings: NotificationsSettings,
) -> None:
    engine = create_engine(settings)
    secret = "Secret Identity 3b9d"
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as raised:
                await connection.execute(
                    text("SELECT * FROM no_such_table WHERE secret_name = :v"), {"v": secret}
                )
    finally:
        await engine.dispose()
    assert "no_such_table" in str(raised.value)
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value)


def test_the_formatter_masks_what_a_careless_caller_passes() -> None:
    handler = LogLines()
    record = logging.LogRecord(
        "regatta.x",
        logging.WARNING,
        __file__,
        1,
        "retrying %s with Authorization: Bearer %s",
        ("postgresql://regatta:pa55word@db:5432/regatta", "k3y-abc"),
        None,
    )
    record.secret_name = "Dive Wilson"
    record.api_key = "k3y-abc"
    handler.emit(record)
    (line,) = handler.parsed()
    assert "pa55word" not in handler.raw[0]
    assert "k3y-abc" not in handler.raw[0]
    assert "Dive Wilson" not in handler.raw[0]
    assert line["secret_name"] == line["api_key"] == "[redacted]"
    assert "postgresql://regatta:[redacted]@db:5432/regatta" in line["message"]
