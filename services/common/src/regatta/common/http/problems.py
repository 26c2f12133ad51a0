"""RFC 9457 problem details for every error path: nothing internal ever reaches a client."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regatta.common.data.errors import (
    DataError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE_URI = "https://regatta.dev/problems/"

_HTTP_DETAILS = {
    404: "No resource exists at this URL.",
    405: "This method is not allowed on this resource.",
}
# What the data layer refuses (data/errors.py), as problems: status, slug, headers.
_DATA_PROBLEMS: dict[type[DataError], tuple[int, str, dict[str, str]]] = {
    IdempotencyKeyReusedError: (422, "idempotency-key-reused", {}),
    IdempotencyKeyInFlightError: (409, "idempotency-key-in-flight", {"Retry-After": "1"}),
}
# Errors that mean "the database or Redis cannot be reached right now", not "the code is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    ConnectionError,
    TimeoutError,
)

logger = logging.getLogger("regatta.errors")


@dataclass(eq=False)
class ProblemError(Exception):
    """An error a client should see, rendered as problem+json by the application's handlers."""

    status: int
    detail: str
    _: KW_ONLY
    slug: str | None = None
    title: str | None = None
    headers: Mapping[str, str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)  # str(error) is its detail, as with any exception


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """Render one problem document."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE_URI + slug if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 -- registered for this type only
    fields = []
    for error in exc.errors():
        # "body" / "query" / "path" say where; the rest names the field, dotted.
        source, *path = [str(part) for part in error.get("loc", ())] or ["body"]
        fields.append(
            {
                "field": ".".join(path) or source,
                "in": source,
                "message": str(error.get("msg", "invalid value")),
                "type": str(error.get("type", "value_error")),
            }
        )
    return await _on_problem(request, _invalid_request(fields))


def _invalid_request(errors: list[dict[str, str]]) -> ProblemError:
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ProblemError(
        422,
        "The request is not valid: " + detail,
        slug="validation-error",
        title="Invalid request",
        extra={"errors": errors},
    )


async def _on_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)  # noqa: S101 -- registered for this type only
    return problem_response(
        exc.status, exc.detail, slug=exc.slug, title=exc.title, headers=exc.headers, extra=exc.extra
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 -- registered for this type only
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    headers = dict(exc.headers or {})
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem_response(
        exc.status_code,
        detail or _HTTP_DETAILS.get(exc.status_code, HTTPStatus(exc.status_code).phrase),
        headers=headers,
    )


def _allowed_methods(request: Request) -> list[str]:
    # Starlette names the first route whose path matched; asked per method, the router knows all.
    return [
        method
        for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


async def _on_data_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DataError)  # noqa: S101 -- registered for this type only
    status, slug, headers = _DATA_PROBLEMS[type(exc)]
    return problem_response(status, str(exc), slug=slug, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Render validation errors, HTTP errors, ProblemError and DataError as problem+json."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(DataError, _on_data_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)


class UnhandledErrorMiddleware:
    """Turn an unexpected exception into a 500 problem that reveals nothing internal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            if isinstance(exc, _UNAVAILABLE):
                logger.warning("dependency unavailable on %s: %r", scope.get("path"), exc)
                response = problem_response(
                    503,
                    "A backing service is unavailable; retry shortly.",
                    slug="dependency-unavailable",
                    headers={"Retry-After": "1"},
                )
            else:
                logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
                response = problem_response(
                    500, "The server failed to handle this request; it has been logged."
                )
            await response(scope, receive, send)


class FieldError(BaseModel):
    """One offending field of an invalid request."""

    field: str
    in_: str = Field(alias="in")
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json for ``statuses``."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            "model": Problem,
        }
        for status in statuses
    }


def invalid_field(
    field: str, location: str, message: str, *, kind: str = "value_error"
) -> ProblemError:
    """A 422 naming one offending field, shaped like the validation errors FastAPI raises."""
    return invalid_fields([field], location, message, kind=kind)


def invalid_fields(
    fields: Sequence[str], location: str, message: str, *, kind: str = "value_error"
) -> ProblemError:
    """A 422 naming several fields that share one mistake (``message``)."""
    return _invalid_request(
        [{"field": f, "in": location, "message": message, "type": kind} for f in fields]
    )
