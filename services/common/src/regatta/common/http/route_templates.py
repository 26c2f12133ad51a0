"""The route template that labels a request's metrics, resolved from a table built once.

prometheus-fastapi-instrumentator names each request by its route template
(``/items/{item_id}``) before the app sees it. Its resolver flattens the app's routers and asks
every route in turn, on every request: with FastAPI's included routers that is about 25 µs of a
request that costs 400 µs in all. :class:`RouteTemplates` flattens the routes the same way once,
and then matches the path against each route's own compiled pattern in the same order, with the
same rules (the first full match wins; else the first route whose path matched but whose
methods did not; else none). An app whose routes it cannot read that way — a mount, a host, a
route type it does not know — keeps the instrumentator's resolver. ``test_route_templates``
compares both over every route of every app.

The table is built at the first request and again when the app's own route list changes
length; a route added later to a router already included is not in it (the platform adds none
after startup).

One difference, on purpose: a request no route matches, that a trailing-slash redirect
answers (``/items/7/``), the instrumentator labels with its path — a series per id. Here it
is unmatched like any other, and counted under the handler ``none``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi.routing import APIRoute
from prometheus_fastapi_instrumentator import routing
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Scope

_Entry = tuple[re.Pattern[str], frozenset[str] | None, str]


class RouteTemplates:
    """Resolve ``scope`` to its route template, as ``routing.get_route_name`` does."""

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self._entries = tuple(entries)

    @classmethod
    def of(cls, routes: Sequence[BaseRoute]) -> RouteTemplates | None:
        """The table of ``routes``, or None when one of them needs the instrumentator's resolver."""
        entries: list[_Entry] = []
        for route in routing._effective_routes(list(routes)):  # noqa: SLF001 -- the same flattening
            if isinstance(route, WebSocketRoute):
                continue  # never matches an HTTP request
            entry = _entry(route)
            if entry is None:
                return None
            entries.append(entry)
        return cls(entries)

    def resolve(self, scope: Scope) -> str | None:
        """The template of the first route that fully matches, else the first partial match."""
        path = get_route_path(scope)
        method = scope["method"]
        partial = None
        for pattern, methods, template in self._entries:
            if pattern.match(path) is None:
                continue
            if methods is None or method in methods:
                return template
            if partial is None:
                partial = template
        return partial


def _entry(route: Any) -> _Entry | None:
    # Routes matched by path pattern, then method set, and nothing else: Starlette's Route,
    # FastAPI's APIRoute (the same test before routing) and FastAPI's context for an APIRoute
    # included through a router (which carries the prefixed path and pattern).
    matched_as_a_route = getattr(type(route), "matches", None) in {
        Route.matches,
        APIRoute.matches,
    } or isinstance(getattr(route, "original_route", None), APIRoute)
    if not matched_as_a_route:
        return None  # a mount, a host, a frontend route group: matched by rules of their own
    pattern = getattr(route, "path_regex", None)
    path = getattr(route, "path", None)
    methods = getattr(route, "methods", None)
    if not isinstance(pattern, re.Pattern) or not isinstance(path, str):
        return None
    return pattern, frozenset(methods) if methods else None, path


class TemplatedMetricsMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, naming requests from a :class:`RouteTemplates` table."""

    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(app, **options)
        self._table: tuple[int, RouteTemplates | None] | None = None

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        scope = request.scope
        app = scope.get("app")
        if self.should_include_root_path or not isinstance(app, Starlette):
            return super()._get_handler(request)
        routes = app.routes
        table = self._table
        if table is None or table[0] != len(routes):  # built at the first request, then on change
            table = self._table = (len(routes), RouteTemplates.of(routes))
        templates = table[1]
        if templates is None:
            return super()._get_handler(request)
        template = templates.resolve(scope)
        return (template, True) if template else (request.url.path, False)
