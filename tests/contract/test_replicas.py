"""Two replicas sharing Postgres and Redis: a write on one is never followed by a stale read on
the other."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import AppFactory, client_for

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
async def test_write_on_one_replica_is_seen_by_the_other(start_app: AppFactory) -> None:
    async with (
        start_app() as one,
        start_app() as two,
        client_for(one) as a,
        client_for(two) as b,
    ):
        location = (await a.post("/items", json={"name": "Shared", "price": 1})).headers["location"]
        for version in range(2, 12):
            assert (await a.get(location)).status_code == 200  # both caches warm
            assert (await b.get(location)).status_code == 200
            writer, reader = (a, b) if version % 2 else (b, a)
            patched = await writer.patch(location, json={"price": version})
            assert patched.json()["version"] == version
            read = await reader.get(location)
            assert read.json()["version"] == version
            assert read.json()["price"] == version
            assert read.headers["etag"] == f'"{version}"'
        assert (await b.delete(location)).status_code == 204
        assert (await a.get(location)).status_code == 404


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
async def test_readers_racing_writers_never_see_stale_data_after_a_write(
    start_app: AppFactory,
) -> None:
    async with (
        start_app() as one,
        start_app() as two,
        client_for(one) as a,
        client_for(two) as b,
    ):
        location = (await a.post("/items", json={"name": "Raced", "price": 1})).headers["location"]
        stop = asyncio.Event()

        async def hammer(client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                await client.get(location)

        readers = [asyncio.create_task(hammer(c)) for c in (a, b, a, b)]
        try:
            for _ in range(30):
                written = (await a.patch(location, json={"tax": 1})).json()["version"]
                # Once the write has returned, every replica must show at least that version.
                for client in (a, b):
                    assert (await client.get(location)).json()["version"] >= written
        finally:
            stop.set()
            await asyncio.gather(*readers)


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
async def test_idempotent_replay_across_replicas(start_app: AppFactory) -> None:
    async with (
        start_app() as one,
        start_app() as two,
        client_for(one) as a,
        client_for(two) as b,
    ):
        body = {"name": "Once", "secret_name": "s"}
        headers = {"Idempotency-Key": "cross-replica"}
        first = await a.post("/heroes", json=body, headers=headers)
        again = await b.post("/heroes", json=body, headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        assert len((await b.get("/heroes")).json()["data"]) == 1
