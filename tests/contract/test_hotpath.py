"""Reads and creates answered before routing look exactly like the route's own answers.

Two apps share one database: the platform as shipped, and the same services with the hot path
switched off. Every response the hot path gives must equal, byte for byte and header for header
(the request id aside), what the routed app gives for the same request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import SecretStr

from regatta.common.http.app import create_app
from regatta.heroes.main import SERVICE as HEROES
from regatta.items.main import SERVICE as ITEMS
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import AppFactory, client_for

WRITER = {"Authorization": "Bearer hot-key"}


@asynccontextmanager
async def routed_only(settings: NotificationsSettings) -> AsyncIterator[FastAPI]:
    """The items and heroes services with no hot path: every request is routed."""
    services = [dataclasses.replace(s, cached_reads=(), hot_creates=()) for s in (ITEMS, HEROES)]
    app = create_app(settings, services, title="Regatta")
    async with LifespanManager(app):
        yield app


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in response.headers.items() if k != "x-request-id")
    return response.status_code, headers, response.content


def cache_hits(app: FastAPI, service: str) -> float:
    metric = app.state.metrics.cache_requests.labels(service, "hit")
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


async def test_a_write_is_seen_at_once_on_the_hot_path(
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
    "/items/987654321",  # answered by the hot path: the 404 problem
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


LIST_QUERIES = [
    "",  # answered by the hot path: the default page, then the others below
    "?limit=2",
    "?limit=100",
    "?limit=1&cursor={cursor}",
    "?cursor={cursor}&limit=1",
    "?cursor={cursor}",
    "?limit=0",  # from here on, routed: refused, or spelled in a way the route parses
    "?limit=101",
    "?limit=1000",
    "?limit=02",
    "?limit=%32",
    "?limit=+2",
    "?limit=2.0",
    "?limit=",
    "?limit=2&",
    "?&limit=2",
    "?limit=2&limit=3",
    "?cursor=",
    "?cursor=Zm9v",
    "?cursor=not!base64",
    "?cursor={cursor}&cursor={cursor}",
    "?unknown=1",
    "?limit=2&unknown=1",
    "?limit=1&cursor={cursor}&x=1",
]


@pytest.mark.parametrize(
    ("prefix", "body", "filtered"),
    [
        ("/items", {"name": "Kayak", "price": 310.5}, "?q=kay&limit=1"),
        ("/heroes", {"name": "Ada", "secret_name": "A. Lovelace", "age": 36}, "?min_age=30"),
    ],
)
async def test_list_pages_equal_routed_responses(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
    prefix: str,
    body: dict[str, object],
    filtered: str,
) -> None:
    _, fast, routed = clients
    for n in range(3):
        created = await fast.post(prefix, json={**body, "name": f"Kay {n}"}, headers=WRITER)
        assert created.status_code == 201
    first = await fast.get(f"{prefix}?limit=1")
    assert first.status_code == 200
    cursor = first.json()["next_cursor"]
    assert cursor
    for query in [*LIST_QUERIES, filtered]:
        path = prefix + query.format(cursor=cursor)
        answer = await fast.get(path)
        assert comparable(answer) == comparable(await routed.get(path)), path
        assert answer.status_code in {200, 422}, path
    last = await fast.get(f"{prefix}?limit=2&cursor={cursor}")
    assert [row["name"] for row in last.json()["data"]] == ["Kay 1", "Kay 2"]
    assert last.json()["next_cursor"] is None


async def test_unfiltered_list_pages_are_not_routed(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hot path answers on its own: with the route's service call broken, it still does."""
    _, fast, routed = clients
    await fast.post("/items", json={"name": "Paddle", "price": 12}, headers=WRITER)

    async def broken(**_: object) -> bytes:
        raise AssertionError("routed")

    monkeypatch.setattr("regatta.items.service.list_items", broken)
    for path in ("/items", "/items?limit=5"):
        answer = await fast.get(path)
        assert answer.status_code == 200
        assert [row["name"] for row in answer.json()["data"]] == ["Paddle"]
    # The same request routed reaches the broken call (the error guard answers 500).
    assert (await routed.get("/items?limit=5")).status_code == 500
    assert (await fast.get("/items?limit=5&q=pad")).status_code == 500


def created(response: httpx.Response) -> tuple[int, list[tuple[str, str]], dict[str, object]]:
    """A 201 without what differs between two creates: the id and the timestamps."""
    assert response.status_code == 201, response.text
    headers = sorted(
        (k, v)
        for k, v in response.headers.items()
        if k not in {"x-request-id", "location", "content-length"}
    )
    shown = response.json()
    body = {k: v for k, v in shown.items() if k not in {"id", "created_at", "updated_at"}}
    assert response.headers["location"] == f"{response.request.url.path}/{shown['id']}"
    return response.status_code, headers, body


JSON = {"Content-Type": "application/json"}
NESTED = b"[" * 100_000 + b"]" * 100_000
# (headers, body): every one refused by the route, so by the hot path too, the same way.
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


async def test_refused_creates_answer_as_the_route_does(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, fast, routed = clients
    for headers, body in REFUSED_CREATES:
        answer = await fast.post("/items", content=body, headers=headers)
        assert answer.status_code in {400, 401, 403, 415, 422}, (headers, body[:60], answer.text)
        assert comparable(answer) == comparable(
            await routed.post("/items", content=body, headers=headers)
        ), (headers, body[:60])
    assert (await fast.get("/items")).json()["data"] == []  # nothing was created


@pytest.mark.parametrize(
    ("prefix", "body"),
    [
        ("/items", {"name": "Kayak", "price": 310.5, "description": None, "tax": 0.5}),
        ("/heroes", {"name": "Ada", "secret_name": "A. Lovelace", "age": 36}),
    ],
)
async def test_creates_and_replays_equal_routed_ones(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
    prefix: str,
    body: dict[str, object],
) -> None:
    _, fast, routed = clients
    spellings: list[dict[str, str]] = [
        WRITER,
        {**WRITER, "Idempotency-Key": "first-{client}"},
        {**WRITER, "Content-Type": "application/json; charset=utf-8"},  # routed
        {**WRITER, "Content-Type": "Application/JSON"},  # routed
    ]
    for spelling in spellings:
        headers = {k: v.format(client="fast") for k, v in spelling.items()}
        hot = await fast.post(prefix, json=body, headers=headers)
        headers = {k: v.format(client="routed") for k, v in spelling.items()}
        assert created(hot) == created(await routed.post(prefix, json=body, headers=headers))
        assert (await fast.get(hot.headers["location"])).content == hot.content  # as stored
    # The same key and body again: both replay the first answer, byte for byte.
    key = {**WRITER, "Idempotency-Key": "again"}
    first = await fast.post(prefix, json=body, headers=key)
    for client in (fast, routed, fast):
        replayed = await client.post(prefix, json=body, headers=key)
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.content == first.content
        assert replayed.headers["location"] == first.headers["location"]
    # The same key with another body: the same refusal from both.
    other = {**body, "name": "Someone else"}
    mismatch = await fast.post(prefix, json=other, headers=key)
    assert mismatch.status_code == 422
    assert comparable(mismatch) == comparable(await routed.post(prefix, json=other, headers=key))
    # Two keys: routed, where FastAPI reads one of them.
    for second in ("{client}-2", "{client}-1"):
        answers = [
            await client.post(
                prefix,
                json=body,
                headers=[
                    *WRITER.items(),
                    ("Idempotency-Key", f"{name}-1"),
                    ("Idempotency-Key", second.format(client=name)),
                ],
            )
            for name, client in (("fast", fast), ("routed", routed))
        ]
        assert created(answers[0]) == created(answers[1])
    # A query: routed, and refused as the route refuses it.
    queried = prefix + "?debug=1"
    assert comparable(await fast.post(queried, json=body, headers=WRITER)) == comparable(
        await routed.post(queried, json=body, headers=WRITER)
    )


async def test_valid_creates_are_not_routed(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hot path calls the service itself: with the route's call broken, creates still work."""
    _, fast, routed = clients

    async def broken(**_: object) -> bytes:
        raise AssertionError("routed")

    monkeypatch.setattr("regatta.items.service.create_item", broken)
    body = {"name": "Paddle", "price": 12}
    for headers in (WRITER, {**WRITER, "Idempotency-Key": "paddle-1"}):
        answer = await fast.post("/items", json=body, headers=headers)
        assert answer.status_code == 201
        assert answer.json()["name"] == "Paddle"
    # Routed, the same request reaches the broken call (the error guard answers 500), and so
    # does a create the hot path leaves to the route.
    assert (await routed.post("/items", json=body, headers=WRITER)).status_code == 500
    charset = {**WRITER, "Content-Type": "application/json; charset=utf-8"}
    assert (await fast.post("/items", json=body, headers=charset)).status_code == 500


async def test_a_create_body_over_the_limit_is_413_and_no_error(
    clients: tuple[FastAPI, httpx.AsyncClient, httpx.AsyncClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The limit fails the hot path's read of the body: the route meets the same failure."""
    app, fast, routed = clients
    limit = app.state.settings.max_body_bytes

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield b'{"name": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'", "price": 1}'

    with caplog.at_level(logging.WARNING):
        answers = [
            await client.post("/items", content=chunked(), headers={**JSON, **WRITER})
            for client in (fast, routed)
        ]
    assert answers[0].status_code == 413
    assert comparable(answers[0]) == comparable(answers[1])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert (await fast.get("/items")).json()["data"] == []
