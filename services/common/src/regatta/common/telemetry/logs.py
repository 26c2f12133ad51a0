"""JSON log lines with request and trace ids, secrets masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal

from opentelemetry import trace

from regatta.common.http.middleware import request_id_var

access_logger = logging.getLogger("regatta.access")

# Attributes every LogRecord has (and uvicorn's coloured copy of its message): not ``extra``.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName", "color_message"}
)
# Fields blanked whatever they hold: names of secrets, and of settings that hold one.
_SECRET_FIELDS: Final = frozenset(
    {"api_key", "api_keys", "authorization", "body", "password", "secret", "secret_name", "token"}
    | {"database_url", "redis_url", "smtp_password", "webhook_signing_secret"}
)
REDACTED: Final = "[redacted]"
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
SERVER_ERROR: Final = 500


def scrub(text: str) -> str:
    """``text`` with bearer tokens and URL passwords masked."""
    if "://" not in text and "bearer" not in text.lower():
        return text  # the common case, without running the expressions
    return _URL_PASSWORD.sub(rf"\1{REDACTED}@", _BEARER.sub(rf"\1{REDACTED}", text))


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line, with request and trace correlation."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record``."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "service": self.service,
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = trace.format_trace_id(context.trace_id)
            entry["span_id"] = trace.format_span_id(context.span_id)
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_"):
                continue
            entry[key] = REDACTED if key.lower() in _SECRET_FIELDS else value
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str)


def configure_logging(*, level: str, log_format: Literal["json", "text"], service: str) -> None:
    """Send every logger's records to stdout, as JSON lines or as plain text for a terminal."""
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def request_logged(status: int) -> bool:
    """Whether a request answered with ``status`` leaves a log line at the current level."""
    return access_logger.isEnabledFor(logging.ERROR if status >= SERVER_ERROR else logging.INFO)


def log_request(
    *,
    service: str,
    route: str,
    method: str,
    path: str,
    status: int,
    duration_seconds: float,
    client: str | None = None,
    api_key_id: str | None = None,
    response_bytes: int | None = None,
) -> None:
    """The one line a request leaves (never its query string, headers, body or API key)."""
    level = logging.ERROR if status >= SERVER_ERROR else logging.INFO
    duration_ms = round(duration_seconds * 1000, 3)
    extra: dict[str, object] = {
        "event": "request",
        "service": service,
        "route": route,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
    }
    if client is not None:
        extra["client"] = client
    if api_key_id is not None:
        extra["api_key_id"] = api_key_id
    if response_bytes is not None:
        extra["response_bytes"] = response_bytes
    access_logger.log(level, "%s %s %d %.1fms", method, path, status, duration_ms, extra=extra)
