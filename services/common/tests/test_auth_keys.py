"""API keys for writes: 401/403 as the contract says, public reads, key files, rotation."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict

from regatta.common.http.app import create_app
from regatta.common.http.auth import ANONYMOUS, ApiKeys
from regatta.common.http.context import ContextFactory, RequestContext
from regatta.common.settings import Environment, ServiceSettings
from tests.lifespan import lifespan

# A route that needs a writer's key, as the services declare one (http/context.py).
Writer = Annotated[RequestContext, Depends(ContextFactory("things", "writer"))]

KEY = "rg_test_8d1f0b7c2e"
PROBLEM = "application/problem+json"


class ThingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


def make_app(tmp_path: Path, **overrides: Any) -> FastAPI:
    settings = ServiceSettings(
        environment=Environment.TEST,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/regatta.db",
        **overrides,
    )
    app = create_app(settings, [], title="guarded", service_name="things")

    async def read_things() -> dict[str, str]:
        return {"status": "read"}

    async def create_thing(thing: ThingCreate, context: Writer) -> dict[str, str]:
        return {"name": thing.name, "by": context.writer}

    async def change_thing(context: Writer) -> dict[str, str]:
        return {"by": context.writer}

    app.add_api_route("/things", read_things, methods=["GET"])
    app.add_api_route("/things", create_thing, methods=["POST"])
    app.add_api_route("/things/1", change_thing, methods=["PATCH", "PUT", "DELETE"])
    return app


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="http://things.test") as http,
    ):
        yield http


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def replace_atomically(path: Path, text: str) -> None:
    # What a Secret volume update and a careful operator do: write aside, rename over.
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)


async def test_writes_need_a_known_key_and_reads_are_public(tmp_path: Path) -> None:
    async with serving(make_app(tmp_path, api_keys=KEY)) as client:
        body = {"name": "guarded"}
        missing = await client.post("/things", json=body)
        assert missing.status_code == 401
        assert missing.headers["Content-Type"] == PROBLEM
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="regatta"'
        assert missing.json()["type"].endswith("/unauthenticated")
        for malformed in ("Bearer", "Bearer   ", f"Basic {KEY}", KEY):
            refused = await client.post("/things", json=body, headers={"Authorization": malformed})
            assert refused.status_code == 401, malformed
        unknown = await client.post("/things", json=body, headers=bearer("not-" + KEY))
        assert unknown.status_code == 403
        assert unknown.headers["Content-Type"] == PROBLEM
        assert unknown.json()["type"].endswith("/forbidden")
        assert "not-" not in unknown.text
        for method in ("PATCH", "PUT", "DELETE"):
            assert (await client.request(method, "/things/1")).status_code == 401, method
            answer = await client.request(method, "/things/1", headers=bearer("nope"))
            assert answer.status_code == 403, method
            answer = await client.request(method, "/things/1", headers=bearer(KEY))
            assert answer.status_code == 200, method
        created = await client.post("/things", json=body, headers=bearer(KEY))
        assert created.status_code == 200
        # The principal names the key without revealing it.
        digest = hashlib.sha256(KEY.encode()).hexdigest()
        assert created.json()["by"] == f"key-{digest[:16]}"
        assert KEY not in created.text
        # Reads are public, with or without a key, valid or not.
        for headers in ({}, bearer(KEY), bearer("nope")):
            assert (await client.get("/things", headers=headers)).status_code == 200


async def test_authentication_comes_before_validation(tmp_path: Path) -> None:
    async with serving(make_app(tmp_path, api_keys=KEY)) as client:
        invalid = {"name": "x", "unknown": 1}
        assert (await client.post("/things", json=invalid)).status_code == 401
        assert (await client.post("/things", json=invalid, headers=bearer("no"))).status_code == 403
        answer = await client.post("/things", json=invalid, headers=bearer(KEY))
        assert answer.status_code == 422


async def test_without_keys_writes_are_open(tmp_path: Path) -> None:
    async with serving(make_app(tmp_path)) as client:
        answer = await client.post("/things", json={"name": "open"})
        assert answer.status_code == 200
        assert answer.json()["by"] == ANONYMOUS
        answer = await client.post("/things", json={"name": "open"}, headers=bearer("any"))
        assert answer.status_code == 200


def test_key_files_take_plain_keys_digests_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    digest = hashlib.sha256(b"hashed-key").hexdigest().upper()
    path.write_text(f"# team a\nplain-key  # rotated 2026-01\n\n   \nsha256:{digest}\n")
    keys = ApiKeys(["from-env"], path)
    assert keys.enabled
    for valid in ("plain-key", "hashed-key", "from-env"):
        assert keys.principal(valid) is not None, valid
    for invalid in ("# team a", "plain-key  # rotated 2026-01", f"sha256:{digest}", ""):
        assert keys.principal(invalid) is None, invalid


def test_a_broken_key_file_keeps_the_keys_already_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "api-keys"
    path.write_text("good-key\n")
    keys = ApiKeys([], path)
    with caplog.at_level(logging.INFO, logger="regatta.auth"):
        replace_atomically(path, "new-key\nsha256:abc123\n")  # a digest too short
        for _ in range(5):
            assert keys.principal("good-key") is not None
            assert keys.principal("new-key") is None
        path.unlink()
        for _ in range(5):
            assert keys.principal("good-key") is not None
        replace_atomically(path, "new-key\n")
        assert keys.principal("new-key") is not None
        assert keys.principal("good-key") is None
    messages = [r.getMessage() for r in caplog.records if r.name == "regatta.auth"]
    # One complaint per failure, not one per request, and no key in any of them.
    assert [m for m in messages if m.startswith("cannot read")] == [
        "cannot read API_KEYS_FILE (ValueError); keeping the 1 key(s) already loaded",
        "cannot read API_KEYS_FILE (FileNotFoundError); keeping the 1 key(s) already loaded",
    ]
    assert "loaded 1 API key(s) from file" in messages
    assert not [m for m in messages if "key-" in m or "good" in m or "new-key" in m]


def test_a_missing_key_file_refuses_every_write(tmp_path: Path) -> None:
    keys = ApiKeys([], tmp_path / "not-there")
    assert keys.enabled
    assert keys.principal("anything") is None


async def test_keys_rotate_while_serving_without_a_failed_request(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text("old-key\n")
    outcomes: dict[str, list[int]] = {"old-key": [], "new-key": []}

    async def keep_writing(client: httpx.AsyncClient, key: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            answer = await client.post("/things", json={"name": "busy"}, headers=bearer(key))
            outcomes[key].append(answer.status_code)
            await asyncio.sleep(0)

    async def writing_while(client: httpx.AsyncClient, key: str, text: str) -> None:
        stop = asyncio.Event()
        writers = [asyncio.create_task(keep_writing(client, key, stop)) for _ in range(4)]
        await asyncio.sleep(0.05)
        await asyncio.to_thread(replace_atomically, path, text)
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*writers)

    async with serving(make_app(tmp_path, api_keys_file=path)) as client:
        assert (await client.post("/things", json={}, headers=bearer("new-key"))).status_code == 403
        # Step 1: add the new key; clients of the old one never notice.
        await writing_while(client, "old-key", "old-key\nnew-key\n")
        answer = await client.post("/things", json={"name": "n"}, headers=bearer("new-key"))
        assert answer.status_code == 200
        # Step 2: remove the old key; clients of the new one never notice.
        await writing_while(client, "new-key", "new-key\n")
        answer = await client.post("/things", json={"name": "o"}, headers=bearer("old-key"))
        assert answer.status_code == 403
    assert outcomes["old-key"]
    assert set(outcomes["old-key"]) == {200}
    assert outcomes["new-key"]
    assert set(outcomes["new-key"]) == {200}


async def test_a_key_file_rewritten_in_place_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text("first-key\n")
    keys = ApiKeys([], path)
    assert keys.principal("first-key") is not None
    stat = path.stat()
    path.write_text("other-key\n")  # same inode, same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert keys.principal("other-key") is not None
    assert keys.principal("first-key") is None
