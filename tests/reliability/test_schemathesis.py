"""Each service against its own OpenAPI document, by schemathesis, in-process.

Schemathesis reads ``/openapi.json`` and generates requests from it: boundary values, valid
bodies and parameters, and invalid ones that must be refused. Every answer is checked: never
a server error, a documented status code and content type, a body that matches the documented
schema, valid data accepted and invalid data refused. Each service runs on the embedded
default (SQLite, in-process cache) and on Postgres + Redis, with an API key configured and
sent, so writes reach the database.

Runs are reproducible (derandomized, no example database) and bounded (``MAX_EXAMPLES`` per
operation and phase).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from email_validator import SPECIAL_USE_DOMAIN_NAMES
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import APIOperation
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance

from regatta.common.settings import Environment
from regatta.heroes.main import create_app as create_heroes_app
from regatta.heroes.settings import HeroesSettings
from regatta.items.main import create_app as create_items_app
from regatta.items.settings import ItemsSettings
from regatta.notifications.main import create_app as create_notifications_app
from regatta.notifications.settings import NotificationsSettings
from regatta.notifications.ssrf import AddressPolicy, BlockedAddressError
from tests.servers import PostgresServer, RedisServer

MAX_EXAMPLES = 20
Case = schemathesis.Case[APIOperation[Any, Any, Any, Any]]
API_KEY = "schemathesis-" + "k" * 24
BEARER = {"Authorization": f"Bearer {API_KEY}"}

# The documents are the same on every backend: load them once, at collection.
ITEMS = schemathesis.openapi.from_dict(create_items_app(ItemsSettings()).openapi())
HEROES = schemathesis.openapi.from_dict(create_heroes_app(HeroesSettings()).openapi())
NOTIFICATIONS = schemathesis.openapi.from_dict(
    create_notifications_app(NotificationsSettings()).openapi()
)

bounded = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass(frozen=True)
class Platform:
    """The three services on one backend, each its own app, as in production."""

    items: FastAPI
    heroes: FastAPI
    notifications: FastAPI
    settings: NotificationsSettings


def _settings(database_url: str, redis_url: str | None = None) -> dict[str, Any]:
    return {
        "environment": Environment.TEST,
        "database_url": database_url,
        "redis_url": redis_url,
        "redis_key_prefix": f"st{uuid.uuid4().hex[:8]}:",
        "api_keys": API_KEY,
    }


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """The services on SQLite (one file) or on a fresh Postgres database and Redis."""
    postgres: PostgresServer | None = None
    database = ""
    if request.param == "embedded":
        directory: Path = tmp_path_factory.mktemp("schemathesis")
        values = _settings(f"sqlite+aiosqlite:///{directory}/regatta.db")
    else:
        postgres = request.getfixturevalue("postgres_server")
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis.start()
        database = postgres.create_database()
        values = _settings(postgres.url(database), redis.url())
    notifications_settings = NotificationsSettings(**values)
    try:
        yield Platform(
            items=create_items_app(ItemsSettings(**values)),
            heroes=create_heroes_app(HeroesSettings(**values)),
            notifications=create_notifications_app(notifications_settings),
            settings=notifications_settings,
        )
    finally:
        # Schemathesis starts each app's lifespan on its first request; end them before the
        # database they hold goes away.
        shutdown_lifespans()
        if postgres is not None:
            postgres.drop_database(database)


def _fresh_idempotency_key(case: Case) -> None:
    # Generated keys repeat across examples with different bodies, which the contract answers
    # with 422 (a reused key). Valid keys get a unique value; invalid ones stay to be refused.
    key = case.headers.get("Idempotency-Key")
    if isinstance(key, str) and key.isascii() and key.isprintable() and " " not in key:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex


def _number(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return float("nan")  # compares false: not a range the service would refuse


def _strings(value: object) -> Iterator[str]:
    """Every string in a JSON document, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _expected_refusals(case: Case, policy: AddressPolicy) -> list[Any]:
    """Checks that do not apply: rules the document states in prose, as no JSON Schema can."""
    # A cursor is opaque: only one the service returned is valid, so any other gets 422.
    # If-Match names a version: any other than the current one gets 412.
    if "cursor" in case.query or "If-Match" in case.headers:
        return [positive_data_acceptance]
    # A range whose minimum exceeds its maximum (min_age=9&max_age=2) gets 422.
    query = case.query
    for name, low in query.items():
        high = query.get(name.replace("min_", "max_", 1)) if name.startswith("min_") else None
        if _number(low) > _number(high):
            return [positive_data_acceptance]
    body = case.body if isinstance(case.body, dict) else {}
    # E-mail to a special-use domain (RFC 6761: a@b.test) cannot be delivered: 422.
    to = body.get("to")
    if isinstance(to, str) and to.rsplit(".", 1)[-1].lower() in SPECIAL_USE_DOMAIN_NAMES:
        return [positive_data_acceptance]
    # A webhook payload may be any JSON, but strings without NUL, which no JSON Schema
    # can say of every string at every depth (the payload's description says it).
    if any("\x00" in text for text in _strings(body.get("payload"))):
        return [positive_data_acceptance]
    # A webhook to a literal private address is refused (422).
    url = body.get("url")
    if isinstance(url, str):
        try:
            policy.check_literal_host(urlsplit(url).hostname or "")
        except (BlockedAddressError, ValueError):
            return [positive_data_acceptance]
    return []


def _call_and_validate(case: Case, app: FastAPI, policy: AddressPolicy) -> None:
    _fresh_idempotency_key(case)
    case.call_and_validate(
        app=app, headers=BEARER, excluded_checks=_expected_refusals(case, policy)
    )


@ITEMS.parametrize()
@bounded
def test_items(case: Case, platform: Platform) -> None:
    _call_and_validate(case, platform.items, AddressPolicy())


@HEROES.parametrize()
@bounded
def test_heroes(case: Case, platform: Platform) -> None:
    _call_and_validate(case, platform.heroes, AddressPolicy())


@NOTIFICATIONS.parametrize()
@bounded
def test_notifications(case: Case, platform: Platform) -> None:
    _call_and_validate(
        case, platform.notifications, AddressPolicy(platform.settings.allowed_networks)
    )
