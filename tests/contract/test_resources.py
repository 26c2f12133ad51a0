"""The contract every versioned resource (items, heroes) honours, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, table

from regatta.common.data.idempotency import IdempotentRequest
from regatta.common.http.context import platform_of
from regatta.common.settings import ServiceSettings
from tests.conftest import AppFactory, client_for
from tests.contract.resources import ITEMS, RESOURCES, ResourceCase
from tests.observability.test_metrics import value as metric_value

pytestmark = pytest.mark.parametrize("resource", RESOURCES, ids=str)

PROBLEM = "application/problem+json"


async def create(
    client: httpx.AsyncClient, resource: ResourceCase, **headers: str
) -> httpx.Response:
    response = await client.post(resource.prefix, json=resource.new(), headers=headers)
    assert response.status_code == 201, response.text
    return response


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    return dict(body)


async def test_create_returns_201_location_etag_and_public_fields(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    sent = resource.new()
    response = await client.post(resource.prefix, json=sent)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == resource.public_fields
    assert response.headers["location"] == f"{resource.prefix}/{body['id']}"
    assert response.headers["etag"] == '"1"'
    assert body["version"] == 1
    assert body["name"] == sent["name"]
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() is not None
    assert created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert body["created_at"].endswith("Z")


async def test_get_serves_etag_and_304_on_revalidation(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    location = (await create(client, resource)).headers["location"]
    first = await client.get(location)
    assert first.status_code == 200
    assert first.headers["etag"] == '"1"'
    assert first.headers["cache-control"] == "no-cache"
    for tag in ('"1"', 'W/"1"', '"7", "1"', "*"):
        revalidated = await client.get(location, headers={"If-None-Match": tag})
        assert revalidated.status_code == 304, tag
        assert revalidated.content == b""
        assert revalidated.headers["etag"] == '"1"'
    stale = await client.get(location, headers={"If-None-Match": '"0"'})
    assert stale.status_code == 200
    assert stale.json() == first.json()


async def test_patch_bumps_version_and_next_read_sees_it(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    location = (await create(client, resource)).headers["location"]
    await client.get(location)  # warm the cache
    patched = await client.patch(location, json=resource.change)
    assert patched.status_code == 200
    assert patched.headers["etag"] == '"2"'
    body = patched.json()
    assert body["version"] == 2
    for field, value in resource.change.items():
        assert body[field] == value
    assert body["updated_at"] >= body["created_at"]
    read = await client.get(location)
    assert read.json() == body
    assert (await client.get(location, headers={"If-None-Match": '"1"'})).status_code == 200


async def test_if_match_guards_writes(client: httpx.AsyncClient, resource: ResourceCase) -> None:
    location = (await create(client, resource)).headers["location"]
    stale = await client.patch(location, json=resource.change, headers={"If-Match": '"9"'})
    problem = assert_problem(stale, 412)
    assert stale.headers["etag"] == '"1"'
    assert problem["current_version"] == 1
    ok = await client.patch(location, json=resource.change, headers={"If-Match": '"1"'})
    assert ok.status_code == 200
    assert ok.json()["version"] == 2
    anything = await client.patch(location, json=resource.change, headers={"If-Match": "*"})
    assert anything.status_code == 200
    weak = await client.patch(location, json=resource.change, headers={"If-Match": 'W/"3"'})
    assert_problem(weak, 412)  # If-Match uses strong comparison
    assert_problem(await client.delete(location, headers={"If-Match": '"1"'}), 412)
    assert (await client.get(location)).status_code == 200
    assert (await client.delete(location, headers={"If-Match": '"3"'})).status_code == 204


async def test_if_match_with_digits_that_are_not_ascii_never_matches(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    location = (await create(client, resource)).headers["location"]
    # Latin-1 superscript one: str.isdigit() says a digit, int() refuses it.
    for tag in (b'"\xb9"', b'"1\xb2"'):
        headers = {b"If-Match": tag}
        assert_problem(await client.patch(location, json=resource.change, headers=headers), 412)
        assert_problem(await client.delete(location, headers=headers), 412)
    assert (await client.get(location)).json()["version"] == 1


async def test_delete_then_404_everywhere(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    location = (await create(client, resource)).headers["location"]
    await client.get(location)  # warm the cache
    deleted = await client.delete(location)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(await client.get(location), 404)
    assert_problem(await client.patch(location, json=resource.change), 404)
    assert_problem(await client.delete(location), 404)


@pytest.mark.parametrize("bad_id", ["0", "-1", "9223372036854775808", "1" + "0" * 30, "424242"])
async def test_unknown_and_out_of_range_ids_are_404(
    client: httpx.AsyncClient, resource: ResourceCase, bad_id: str
) -> None:
    path = f"{resource.prefix}/{bad_id}"
    assert_problem(await client.get(path), 404)
    assert_problem(await client.patch(path, json=resource.change), 404)
    assert_problem(await client.delete(path), 404)


@pytest.mark.parametrize("bad_id", ["abc", "1.5", "1;DROP TABLE items", "%2e%2e%2fetc"])
async def test_non_integer_ids_are_client_errors(
    client: httpx.AsyncClient, resource: ResourceCase, bad_id: str
) -> None:
    response = await client.get(f"{resource.prefix}/{bad_id}")
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == PROBLEM


async def test_keyset_pages_cover_everything_once_in_id_order(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    ids = [(await create(client, resource)).json()["id"] for _ in range(25)]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = await client.get(resource.prefix, params=params)
        assert page.status_code == 200
        body = page.json()
        assert set(body) == {"data", "next_cursor"}
        seen += [row["id"] for row in body["data"]]
        assert all(set(row) == resource.public_fields for row in body["data"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids)
    assert pages == 3
    default = (await client.get(resource.prefix)).json()
    assert len(default["data"]) == 20


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"cursor": "eyJ2IjoxLCJhZnRlciI6LTF9"},  # {"v":1,"after":-1}
        {"cursor": "x" * 500},
        {"cursor": "eyJ2IjoxfQ"},  # {"v":1}
        {"cursor": "W10"},  # []
    ],
)
async def test_bad_paging_parameters_are_422(
    client: httpx.AsyncClient, resource: ResourceCase, params: dict[str, str | int]
) -> None:
    problem = assert_problem(await client.get(resource.prefix, params=params), 422)
    assert problem["errors"]


async def test_idempotent_create_replays_and_creates_once(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    body = resource.new()
    headers = {"Idempotency-Key": "order-7f3a"}
    first = await client.post(resource.prefix, json=body, headers=headers)
    again = await client.post(resource.prefix, json=dict(reversed(body.items())), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    listed = (await client.get(resource.prefix, params={"limit": 100})).json()["data"]
    assert [row["id"] for row in listed] == [first.json()["id"]]
    other = await client.post(resource.prefix, json=resource.new(), headers=headers)
    problem = assert_problem(other, 422)
    assert "Idempotency-Key" in str(problem["detail"])
    fresh = await client.post(resource.prefix, json=body, headers={"Idempotency-Key": "order-2"})
    assert fresh.json()["id"] != first.json()["id"]


async def test_concurrent_requests_with_one_key_create_once(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    body = resource.new()
    responses = await asyncio.gather(
        *(
            client.post(resource.prefix, json=body, headers={"Idempotency-Key": "burst"})
            for _ in range(8)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}
    assert 201 in statuses
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    listed = (await client.get(resource.prefix)).json()["data"]
    assert len(listed) == 1


async def test_a_key_claimed_between_look_up_and_write_replays_the_winner(
    start_app: AppFactory,
    resource: ResourceCase,
    settings: ServiceSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On Postgres a keyed create looks the key up, then claims it in the statement that writes.
    # A request whose look-up ran before another one with the same key committed must find
    # its claim refused, write nothing, and replay the winner (or refuse a different body).
    if settings.redis_url is None:
        pytest.skip("the embedded backend holds the key for the whole transaction instead")
    body = resource.new()
    headers = {"Idempotency-Key": "race"}
    async with start_app() as app, client_for(app) as client:
        winner = await client.post(resource.prefix, json=body, headers=headers)
        assert winner.status_code == 201
        service = resource.prefix.strip("/")
        store: Any = platform_of(app).idempotency[service]  # its private look-up, patched
        look_up = store._look_up
        missed: list[bool] = []

        async def late_look_up(
            connection: object, request: IdempotentRequest, draw: object
        ) -> object:
            if not missed:  # the first look-up ran before the winner committed
                missed.append(True)
                request = replace(request, key="unused")
            return await look_up(connection, request, draw)

        monkeypatch.setattr(store, "_look_up", late_look_up)
        loser = await client.post(resource.prefix, json=body, headers=headers)
        assert missed
        assert loser.status_code == 201
        assert loser.content == winner.content
        assert loser.headers["location"] == winner.headers["location"]
        assert loser.headers["idempotent-replayed"] == "true"
        missed.clear()
        other = await client.post(resource.prefix, json=resource.new(), headers=headers)
        assert missed
        assert_problem(other, 422)
        listed = (await client.get(resource.prefix)).json()["data"]
        assert [row["id"] for row in listed] == [winner.json()["id"]]
        engine = platform_of(app).serving.database.engine
        async with engine.connect() as connection:
            outbox_rows = select(func.count()).select_from(table(f"{service}_outbox"))
            events = await connection.scalar(outbox_rows)
        assert events == 1
        metrics = (await client.get("/metrics")).text
    labels = {"service_name": service}
    for outcome, count in (("stored", 1), ("replayed", 1), ("mismatch", 1), ("conflict", 0)):
        counted = metric_value(
            metrics, "regatta_idempotency_requests_total", outcome=outcome, **labels
        )
        assert counted == count, outcome


async def test_a_create_answers_what_the_stored_row_reads_back_as(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    # Postgres renders a create's response before writing the row (one statement for row,
    # event and key): it must equal the row as read back from the database.
    bodies = [resource.new() for _ in range(3)]
    if resource is ITEMS:
        bodies += [
            {"name": 'Ünïcode "quoted" ☃', "price": 0.1, "tax": 0, "description": ""},
            {"name": "Big", "price": 999999999.99, "tax": 0.01, "description": "x" * 2000},
            {"name": "Integral", "price": 7},
        ]
    created = []
    for n, body in enumerate(bodies):
        response = await client.post(
            resource.prefix, json=body, headers={"Idempotency-Key": f"shape-{n}"}
        )
        assert response.status_code == 201, response.text
        created.append(response.json())
    listed = (await client.get(resource.prefix, params={"limit": 100})).json()["data"]
    assert listed == created


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "naïve"])
async def test_malformed_idempotency_keys_are_422(
    client: httpx.AsyncClient, resource: ResourceCase, key: str
) -> None:
    response = await client.post(
        resource.prefix, json=resource.new(), headers={b"Idempotency-Key": key.encode()}
    )
    assert_problem(response, 422)


async def test_parallel_creates_get_distinct_ids(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    responses = await asyncio.gather(
        *(client.post(resource.prefix, json=resource.new()) for _ in range(20))
    )
    assert all(r.status_code == 201 for r in responses)
    assert len({r.json()["id"] for r in responses}) == 20


async def test_parallel_if_match_writers_exactly_one_wins(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    location = (await create(client, resource)).headers["location"]
    responses = await asyncio.gather(
        *(
            client.patch(location, json=resource.change, headers={"If-Match": '"1"'})
            for _ in range(10)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [412] * 9
    assert (await client.get(location)).json()["version"] == 2


async def test_unguarded_parallel_patches_each_bump_the_version(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    location = (await create(client, resource)).headers["location"]
    responses = await asyncio.gather(
        *(client.patch(location, json=resource.change) for _ in range(10))
    )
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 12))
    assert (await client.get(location)).json()["version"] == 11


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 422),
        (b'{"name": "x"', "application/json", 422),
        (b"[1, 2, 3]", "application/json", 422),
        (b'"just a string"', "application/json", 422),
        (b"null", "application/json", 422),
        (b"name=x&price=1", "application/x-www-form-urlencoded", 415),
        (b'{"name": "x"}', "text/plain", 415),
        (b"\xff\xfe\xfd", "application/json", 422),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 422),
    ],
)
async def test_bodies_that_are_not_json_objects_are_rejected(
    client: httpx.AsyncClient,
    resource: ResourceCase,
    content: bytes,
    content_type: str,
    status: int,
) -> None:
    response = await client.post(
        resource.prefix, content=content, headers={"Content-Type": content_type}
    )
    problem = assert_problem(response, status) if response.status_code == status else None
    assert problem is not None or 400 <= response.status_code < 500, response.text
    assert (await client.get(resource.prefix)).json()["data"] == []


async def test_body_without_content_type_is_refused(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    response = await client.post(resource.prefix, content=b'{"name": "x"}')
    assert response.status_code in {415, 422}
    assert response.headers["content-type"] == PROBLEM


async def test_oversized_body_is_413_before_parsing(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    body = {**resource.new(), "name": "x" * (1024 * 1024)}
    assert_problem(await client.post(resource.prefix, json=body), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(2048):
            yield b"x" * 1024

    streamed = await client.post(
        resource.prefix,
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(streamed, 413)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"name": None},
        {"name": ""},
        {"unknown": 1},
        {"id": 5},
        {"version": 9},
        {"name": "nul\u0000byte"},
        {"name": "x" * 5000},
    ],
)
async def test_invalid_patches_are_422_and_change_nothing(
    client: httpx.AsyncClient, resource: ResourceCase, change: dict[str, object]
) -> None:
    created = (await create(client, resource)).json()
    location = f"{resource.prefix}/{created['id']}"
    problem = assert_problem(await client.patch(location, json=change), 422)
    assert problem["errors"]
    assert (await client.get(location)).json() == created


async def test_write_methods_not_allowed_are_405_problems(
    client: httpx.AsyncClient, resource: ResourceCase
) -> None:
    location = (await create(client, resource)).headers["location"]
    response = await client.put(location, json=resource.new())
    assert_problem(response, 405)
    assert response.headers["allow"] == "DELETE, GET, HEAD, PATCH"
    listing = await client.delete(resource.prefix)
    assert_problem(listing, 405)
    assert listing.headers["allow"] == "GET, HEAD, POST"
