"""Cache hits answered in front of the routes look exactly like the route's own answers.

Two apps share one database: the platform as shipped, and the same services with no resource
declared for the cache layer (readcache.py). Every response the layer gives must equal, byte for
byte and header for header (the request id aside), what the routed app gives for the same
request; everything but a hit of ``GET /{resource}/{id}`` is the route's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from regatta.common.http.app import create_app
from regatta.common.http.context import platform_of
from regatta.heroes.main import SERVICE as HEROES
from regatta.items import service as items_service
from regatta.items.main import SERVICE as ITEMS
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import AppFactory, client_for
from tests.lifespan import lifespan

WRITER = {"Authorization": "Bearer hot-key"}


@asynccontextmanager
async def routed_only(settings: NotificationsSettings) -> AsyncIterator[FastAPI]:
    """The items and heroes services with no cache layer: every request is routed."""
    services = [
        dataclasses.replace(
            s, resources=[dataclasses.replace(r, read_cache=False) for r in s.resources]
        )
        for s in (ITEMS, HEROES)
    ]
    app = create_app(settings, services, title="Regatta")
    async with lifespan(app):
        yield app


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in response.headers.items() if k != "x-request-id")
    return response.status_code, headers, response.content


def cache_hits(app: FastAPI, service: str) -> float:
    metric = platform_of(app).metrics.cache_requests.labels(service, "hit")
    return float(metric._value.get())


@pytest.fixture
async def clients(
    start_app: AppFactory, settings: NotificationsSettings
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient]]:
    async with (
        start_app(api_keys=[SecretStr("hot-key")]) as app,
        routed_only(settings.model_copy(update={"api_keys": [SecretStr("hot-key")]})) as plain,
        client_for(app) as fast,
        client_for(plain) as routed,
    ):
        yield app, fast, routed


@pytest.mark.parametrize(
    ("prefix", "body"),
    [
        ("/items", {"name": "Kayak", "price": 310.5}),
        ("/heroes", {"name": "Ada", "secret_name": "A. Lovelace", "age": 36}),
    ],
)
async def test_hits_equal_routed_responses(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient], prefix: str, body: object
) -> None:
    app, fast, routed = clients
    created = await fast.post(prefix, json=body, headers=WRITER)
    assert created.status_code == 201
    location = created.headers["location"]
    service = prefix.strip("/")

    # A read served from the cache. Not necessarily the first: a process's new Redis connection
    # (the event relay's first, just after the create) advances the cache generation and
    # turns the entries stored before it into misses (cache.py), so read until one hits.
    for _ in range(5):
        before = cache_hits(app, service)
        hit = await fast.get(location)
        if cache_hits(app, service) == before + 1:
            break
    else:
        pytest.fail("no read was served from the cache")
    assert comparable(hit) == comparable(await routed.get(location))
    assert hit.headers["content-type"] == "application/json"

    etag = hit.headers["etag"]
    revalidated = await fast.get(location, headers={"If-None-Match": etag})
    assert revalidated.status_code == 304
    assert comparable(revalidated) == comparable(
        await routed.get(location, headers={"If-None-Match": etag})
    )
    for other in ('"999"', f'W/{etag}, "999"', "*"):
        headers = {"If-None-Match": other}
        assert comparable(await fast.get(location, headers=headers)) == comparable(
            await routed.get(location, headers=headers)
        )


async def test_a_write_is_seen_at_once_through_the_cache(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, fast, _ = clients
    location = (
        await fast.post("/items", json={"name": "Oar", "price": 20}, headers=WRITER)
    ).headers["location"]
    assert (await fast.get(location)).json()["price"] == 20
    await fast.get(location)  # warm
    changed = await fast.patch(location, json={"price": 25}, headers=WRITER)
    assert changed.status_code == 200
    assert (await fast.get(location)).json()["price"] == 25
    assert (await fast.delete(location, headers=WRITER)).status_code == 204
    gone = await fast.get(location)
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"


ODD_PATHS = [
    "/items/987654321",  # a miss: the route answers the 404 problem
    "/items/9223372036854775807",
    "/items/0",
    "/items/01",
    "/items/-1",
    "/items/abc",
    "/items/1.0",
    "/items/%31",
    "/items/9223372036854775808",
    "/items/99999999999999999999",
    "/items/1/",
    "/items/1/extra",
    "/items/",
    "/items",
    "/itemsx/1",
    "/items/1?unknown=1",
    "/items/1?",
]


async def test_odd_ids_and_paths_answer_as_the_routes_do(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, fast, routed = clients
    await fast.post("/items", json={"name": "Sail", "price": 99}, headers=WRITER)
    await fast.get("/items/1")  # item 1 is now cached: the odd spellings must still be routed
    for path in ODD_PATHS:
        assert comparable(await fast.get(path)) == comparable(await routed.get(path)), path


JSON = {"Content-Type": "application/json"}
NESTED = b"[" * 100_000 + b"]" * 100_000
# (headers, body): every one refused by the route; none may create anything.
REFUSED_CREATES: list[tuple[Mapping[str, str] | Mapping[bytes, bytes], bytes]] = [
    ({**JSON, **WRITER}, b""),
    ({**JSON, **WRITER}, b"{"),
    ({**JSON, **WRITER}, b"null"),
    ({**JSON, **WRITER}, b"[]"),
    ({**JSON, **WRITER}, b'"Kayak"'),
    ({**JSON, **WRITER}, b"{}"),
    ({**JSON, **WRITER}, b'{"name": "", "price": 1}'),
    ({**JSON, **WRITER}, b'{"name": "Kayak", "price": -1}'),
    ({**JSON, **WRITER}, b'{"name": "Kayak", "price": NaN}'),
    ({**JSON, **WRITER}, b'{"name": "Kayak", "price": 1e400}'),
    ({**JSON, **WRITER}, b'{"name": "Kayak", "price": "1"}'),
    ({**JSON, **WRITER}, b'{"name": "Kayak", "price": 1, "colour": "red"}'),
    ({**JSON, **WRITER}, b'{"name": "Kay\\u0000ak", "price": 1}'),
    ({**JSON, **WRITER}, b'{"name": "\xff", "price": 1}'),
    ({**JSON, **WRITER}, b'{"name": "\\ud800", "price": 1}'),
    ({**JSON, **WRITER}, NESTED),
    (JSON, b'{"name": "Kayak", "price": 1}'),
    ({**JSON, "Authorization": "Bearer wrong-key"}, b'{"name": "Kayak", "price": 1}'),
    ({**JSON, "Authorization": "Basic aG90LWtleQ=="}, b'{"name": "Kayak", "price": 1}'),
    ({**JSON, "Authorization": "Bearer wrong-key"}, b"{"),
    (JSON, b"{}"),
    ({**JSON, **WRITER, "Idempotency-Key": ""}, b'{"name": "Kayak", "price": 1}'),
    ({**JSON, **WRITER, "Idempotency-Key": "k" * 256}, b'{"name": "Kayak", "price": 1}'),
    ({**JSON, **WRITER, "Idempotency-Key": "has space"}, b'{"name": "Kayak", "price": 1}'),
    (
        {
            b"content-type": b"application/json",
            b"authorization": b"Bearer hot-key",
            b"idempotency-key": b"caf\xe9",
        },
        b'{"name": "Kayak", "price": 1}',
    ),
    ({"Content-Type": "text/plain", **WRITER}, b'{"name": "Kayak", "price": 1}'),
    ({**WRITER}, b'{"name": "Kayak", "price": 1}'),
]


async def test_refused_creates_are_4xx_problems_and_create_nothing(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, fast, _ = clients
    for headers, body in REFUSED_CREATES:
        answer = await fast.post("/items", content=body, headers=headers)
        assert answer.status_code in {400, 401, 403, 415, 422}, (headers, body[:60], answer.text)
        assert answer.headers["content-type"] == "application/problem+json", (headers, body[:60])
    assert (await fast.get("/items")).json()["data"] == []  # nothing was created


async def test_a_hit_needs_no_route_and_a_miss_looks_the_cache_up_once(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layer answers a hit alone; a miss goes to the route, which does not look again."""
    app, fast, _ = clients
    location = (
        await fast.post("/items", json={"name": "Paddle", "price": 12}, headers=WRITER)
    ).headers["location"]
    lookups = platform_of(app).metrics.cache_requests

    def counted() -> float:
        return sum(float(lookups.labels("items", r)._value.get()) for r in ("hit", "miss"))

    for _ in range(5):  # until the entry is cached (see test_hits_equal_routed_responses)
        before_hits = cache_hits(app, "items")
        assert (await fast.get(location)).status_code == 200
        if cache_hits(app, "items") == before_hits + 1:
            break
    else:
        pytest.fail("no read was served from the cache")

    # A miss (an id never cached) reaches the route: one look-up in all, the layer's.
    before = counted()
    assert (await fast.get("/items/987654321")).status_code == 404
    assert counted() == before + 1

    async def broken(**_: object) -> object:
        raise AssertionError("routed")

    monkeypatch.setattr(items_service.items, "read", broken)
    hit = await fast.get(location)
    assert hit.status_code == 200
    assert hit.json()["name"] == "Paddle"
    assert (await fast.get("/items/987654321")).status_code == 500  # the broken route
