"""What every service shares: health, errors, request ids, compression, metrics, auth, CORS."""

from __future__ import annotations

import gzip
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from daemons import PostgresServer
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from embedded import create_embedded_app
from regatta.common.data.db import Database
from regatta.common.http.context import platform_of
from regatta.common.settings import Environment
from regatta.items.main import create_app as create_items_app
from regatta.items.settings import ItemsSettings
from regatta.notifications.main import create_app as create_notifications_app
from regatta.notifications.settings import NotificationsSettings
from tests.conftest import AppFactory, client_for
from tests.lifespan import lifespan

PROBLEM = "application/problem+json"


async def test_liveness_and_readiness(client: httpx.AsyncClient) -> None:
    for path in ("/livez", "/healthz"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


async def test_readiness_turns_503_once_shutdown_begins(start_app: AppFactory) -> None:
    async with start_app() as app, client_for(app) as client:
        platform_of(app).lifecycle.begin_shutdown()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert (await client.get("/livez")).status_code == 200


async def test_readiness_is_503_when_the_database_is_gone(start_app: AppFactory) -> None:
    async with start_app() as app, client_for(app) as client:

        async def broken() -> None:
            raise ConnectionRefusedError

        platform_of(app).lifecycle.checks["database"] = broken
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "unavailable"
        assert (await client.get("/livez")).status_code == 200


async def test_request_id_is_echoed_when_sane_and_minted_otherwise(
    client: httpx.AsyncClient,
) -> None:
    echoed = await client.get("/items", headers={"X-Request-ID": "abc-123.trace:7"})
    assert echoed.headers["x-request-id"] == "abc-123.trace:7"
    minted = await client.get("/items")
    assert len(minted.headers["x-request-id"]) == 32
    for hostile in ("a b", "x" * 200, "<script>", "id\u00e9".encode().decode("latin-1")):
        response = await client.get("/items", headers={b"X-Request-ID": hostile.encode("latin-1")})
        assert response.headers["x-request-id"] != hostile
        assert len(response.headers["x-request-id"]) == 32
    missing = await client.get("/items/999")
    assert missing.headers["x-request-id"]


async def test_unknown_routes_are_404_problems(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 404


async def test_large_responses_are_gzipped_small_ones_not(client: httpx.AsyncClient) -> None:
    for n in range(15):
        await client.post(
            "/items", json={"name": f"Item {n}", "description": "d" * 100, "price": 1}
        )
    big = await client.get("/items", headers={"Accept-Encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    assert len(big.json()["data"]) == 15  # httpx decoded it
    request = client.build_request("GET", "/items", headers={"Accept-Encoding": "gzip"})
    compressed = await client.send(request, stream=True)
    header = b"".join([chunk async for chunk in compressed.aiter_raw()])[:10]
    await compressed.aclose()
    assert header[8] == 0  # the gzip header's XFL: 2 would mean the slowest level (9)
    small = await client.get("/items/1", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    raw = await client.get("/items", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert gzip.compress(raw.content)  # sanity: the identity body is plain JSON
    assert raw.json() == big.json()


async def test_metrics_are_exposed_with_route_templates(client: httpx.AsyncClient) -> None:
    await client.post("/items", json={"name": "Metered", "price": 2})
    await client.get("/items/1")
    await client.get("/items/2")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "text/plain" in metrics.headers["content-type"]
    text = metrics.text
    assert 'handler="/items/{item_id}"' in text
    assert 'handler="/items/1"' not in text


async def test_openapi_documents_every_route_and_problem_responses(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/items", "/items/{item_id}", "/heroes", "/heroes/{hero_id}"} <= spec["paths"].keys()
    create = spec["paths"]["/items"]["post"]["responses"]
    assert PROBLEM in create["422"]["content"]
    hero_read = spec["components"]["schemas"]["HeroRead"]
    assert "secret_name" not in hero_read["properties"]
    # The conditional headers, read by the handlers themselves, are documented all the same.
    one_item = spec["paths"]["/items/{item_id}"]
    headers = {
        method: {p["name"] for p in one_item[method]["parameters"] if p["in"] == "header"}
        for method in ("get", "patch", "delete")
    }
    assert headers == {"get": {"If-None-Match"}, "patch": {"If-Match"}, "delete": {"If-Match"}}
    paths = [p["name"] for p in one_item["get"]["parameters"]]
    assert paths.count("item_id") == 1


async def test_unexpected_errors_are_500_problems_without_internals(
    start_app: AppFactory,
) -> None:
    async with start_app() as app:
        _add_failing_route(app)
        async with client_for(app) as client:
            response = await client.get("/items/boom/explode")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]


def _add_failing_route(app: FastAPI) -> None:
    async def explode() -> None:
        msg = "secret detail: SELECT * FROM items"
        raise RuntimeError(msg)

    app.router.add_api_route("/items/boom/explode", explode)


async def test_database_outage_is_503_not_500(start_app: AppFactory) -> None:
    unreachable = Database(
        create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none", pool_timeout=1)
    )
    async with start_app() as app, client_for(app) as client:
        platform_of(app).serving.database = unreachable  # what request handlers use from now on
        try:
            response = await client.post("/items", json={"name": "x", "price": 1})
        finally:
            await unreachable.close()
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"]


class TestApiKeys:
    KEY = "rg_live_4f1c2d"

    @pytest.fixture
    async def secured(self, start_app: AppFactory) -> httpx.AsyncClient:  # type: ignore[misc]
        async with start_app(api_keys=[SecretStr(self.KEY)]) as app, client_for(app) as client:
            yield client

    async def test_writes_need_a_known_key_reads_do_not(self, secured: httpx.AsyncClient) -> None:
        body = {"name": "Guarded", "price": 5}
        missing = await secured.post("/items", json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.headers["content-type"] == PROBLEM
        wrong = await secured.post("/items", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        basic = await secured.post("/items", json=body, headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401
        auth = {"Authorization": f"Bearer {self.KEY}"}
        created = await secured.post("/items", json=body, headers=auth)
        assert created.status_code == 201
        location = created.headers["location"]
        assert (await secured.get(location)).status_code == 200
        assert (await secured.get("/items")).status_code == 200
        assert (await secured.patch(location, json={"price": 6})).status_code == 401
        assert (await secured.delete(location)).status_code == 401
        assert (await secured.patch(location, json={"price": 6}, headers=auth)).status_code == 200
        assert (await secured.delete(location, headers=auth)).status_code == 204


async def test_keys_file_rotates_without_restart(start_app: AppFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("old-key\n")
    async with start_app(api_keys_file=keys) as app, client_for(app) as client:
        body = {"name": "Rotated", "price": 1}
        old = {"Authorization": "Bearer old-key"}
        new = {"Authorization": "Bearer new-key"}
        assert (await client.post("/items", json=body, headers=old)).status_code == 201
        digest = hashlib.sha256(b"new-key").hexdigest()
        keys.write_text(f"# rotated\nsha256:{digest}\n")
        os.utime(keys, (1, 1))  # a different mtime, even within the same clock tick
        assert (await client.post("/items", json=body, headers=new)).status_code == 201
        assert (await client.post("/items", json=body, headers=old)).status_code == 403


async def test_cors_allows_only_configured_origins(start_app: AppFactory) -> None:
    async with start_app(cors_origins=["https://app.example"]) as app, client_for(app) as client:
        preflight = await client.options(
            "/items",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.get("/items", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_no_cors_headers_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/items", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cache_can_be_disabled_and_reads_stay_correct(start_app: AppFactory) -> None:
    async with start_app(cache_enabled=False) as app, client_for(app) as client:
        location = (await client.post("/items", json={"name": "Raw", "price": 1})).headers[
            "location"
        ]
        assert (await client.get(location)).json()["version"] == 1
        await client.patch(location, json={"price": 2})
        assert (await client.get(location)).json()["price"] == 2
        assert await platform_of(app).serving.cache.get("items:1") is None


@pytest.mark.postgres
async def test_a_database_out_of_connection_slots_is_503_not_500(
    postgres_server: PostgresServer, postgres_url: str, redis_url: str
) -> None:
    # "too many connections" (SQLSTATE 53300) is what a pod added by the autoscaler meets when
    # the pools outgrow max_connections: the server is there but has no room, retry shortly.
    database = make_url(postgres_url).database
    assert database
    role = f"limited_{uuid.uuid4().hex[:12]}"
    settings = NotificationsSettings(
        environment=Environment.TEST,
        database_url=postgres_url,
        redis_url=redis_url,
        redis_key_prefix=f"t{uuid.uuid4().hex[:8]}:",
    )
    # The first app migrates, as the superuser.
    first = create_embedded_app(settings)
    async with lifespan(first), client_for(first) as client:
        created = await client.post("/items", json={"name": "Seen", "price": 1})
        assert created.status_code == 201
    postgres_server.psql(
        f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1;"
        f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};"
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
        database=database,
    )
    limited_url = postgres_url.replace(f"//{postgres_server.superuser}@", f"//{role}@")
    holder = await asyncpg.connect(limited_url.replace("+asyncpg", ""))  # the only slot
    try:
        limited = settings.model_copy(
            update={
                "database_url": SecretStr(limited_url),
                "run_migrations_on_start": False,
                "cache_enabled": False,
            }
        )
        app = create_embedded_app(limited)
        async with lifespan(app), client_for(app) as client:
            answers = [
                await client.get(created.headers["location"]),
                await client.get("/items"),
                await client.post("/items", json={"name": "Lost", "price": 2}),
            ]
            await holder.close()  # room again: the same requests succeed
            after = await client.get(created.headers["location"])
    finally:
        if not holder.is_closed():
            await holder.close()
        postgres_server.psql(f"DROP OWNED BY {role}; DROP ROLE {role}", database=database)
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == PROBLEM
        assert answer.headers["retry-after"]
    assert after.status_code == 200
    assert after.json()["name"] == "Seen"


@pytest.mark.postgres
async def test_the_database_pool_is_split_by_where_requests_run(
    postgres_url: str, redis_url: str
) -> None:
    # DB_POOL_SIZE is one budget per process (the chart sums them against max_connections):
    # items' requests all run on the executor, notifications' all in sessions.
    common: dict[str, Any] = {
        "environment": Environment.TEST,
        "database_url": postgres_url,
        "redis_url": redis_url,
        "redis_key_prefix": f"t{uuid.uuid4().hex[:8]}:",
        "db_pool_size": 15,
    }
    apps = {
        "items": create_items_app(ItemsSettings(**common)),
        "notifications": create_notifications_app(NotificationsSettings(**common)),
        "embedded": create_embedded_app(NotificationsSettings(**common)),
    }
    split: dict[str, tuple[int, int]] = {}
    for name, app in apps.items():
        async with lifespan(app):
            database = platform_of(app).serving.database
            split[name] = (database.statements.size, database.engine.pool.size())  # type: ignore[attr-defined]
    assert split == {"items": (13, 2), "notifications": (0, 15), "embedded": (7, 8)}
