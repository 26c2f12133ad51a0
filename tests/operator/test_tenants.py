"""Tenants kept apart: a Redis user per ApiService on its own prefix, a Postgres role per database.

Redis runs with the chart's own start script (the built-in Redis's ACL file) on a free port;
Postgres is the test session's server. The operator provisions two ApiServices through
`reconcile()` (kmock plays Kubernetes), and each one's credentials are tried on the other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import kmock
import pytest
import redis.asyncio as redis
from daemons import DaemonUnavailableError, find_redis, free_port, spawn_child, stop_child
from redis.exceptions import AuthenticationError, NoPermissionError

from regatta.operator import database
from regatta.operator.builders import Target, redis_key_prefix
from regatta.operator.kube import Cluster, secret_values
from regatta.operator.reconcile import ROTATE_ANNOTATION, finalize, reconcile
from regatta.operator.settings import PlatformSettings
from regatta.operator.spec import parse_spec
from tests.chart.manifests import render
from tests.operator.support import api_service
from tests.servers import PostgresServer

ADMIN_PASSWORD = "platform-secret"


def chart_redis_script() -> str:
    """The built-in Redis's start script, as the chart renders it."""
    redis_set = render({}).get("StatefulSet", "regatta-redis")
    (container,) = redis_set["spec"]["template"]["spec"]["containers"]
    command: list[str] = container["command"]
    assert command[:2] == ["sh", "-c"]
    return command[2]


class ChartRedis:
    """redis-server started by the chart's script, its /data in a temporary directory."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.script = chart_redis_script().replace("/data", str(data))
        self._process: Any = None

    def start(self) -> None:
        argv = [
            "sh", "-c", self.script, "redis-server",
            "--dir", str(self.data), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        env = {**os.environ, "REDISCLI_AUTH": ADMIN_PASSWORD}
        self._process = spawn_child(argv, log_path=self.data / "redis.log", env=env)

    def stop(self) -> None:
        stop_child(self._process)

    def url(self, user: str = "", password: str = ADMIN_PASSWORD) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    async def ready(self) -> None:
        async with asyncio.timeout(20):
            while True:
                client = redis.Redis.from_url(self.url())
                try:
                    if await client.ping():
                        return
                except (OSError, redis.ConnectionError):
                    await asyncio.sleep(0.05)
                finally:
                    await client.aclose()


@pytest.fixture
def chart_redis(tmp_path: Path) -> Iterator[ChartRedis]:
    try:
        find_redis()
    except DaemonUnavailableError as error:
        pytest.skip(str(error))
    server = ChartRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _secret(server: kmock.KubernetesEmulator, name: str) -> dict[str, str]:
    return secret_values(server.objects[kmock.resource("v1/secrets"), "shop", name].raw)


def _prefix(name: str, platform: PlatformSettings) -> str:
    target = Target(name=name, namespace="shop", spec=parse_spec(api_service(name)["spec"]))
    return redis_key_prefix(target, platform)


async def test_two_api_services_cannot_read_each_others_redis_keys(
    chart_redis: ChartRedis,
    cluster: Cluster,
    kmock: kmock.KubernetesEmulator,
    platform: PlatformSettings,
) -> None:
    await chart_redis.ready()
    # The chart's Redis refuses anonymous clients: the default user has the platform's password.
    anonymous = redis.Redis(port=chart_redis.port)
    with pytest.raises(AuthenticationError):
        await anonymous.ping()
    await anonymous.aclose()

    platform = platform.model_copy(update={"redis_url": chart_redis.url(), "redis_users": True})
    for name in ("orders", "billing"):
        status = await reconcile(
            body=api_service(name, redis=True), settings=platform, cluster=cluster
        )
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "False", degraded
    orders, billing = _secret(kmock, "orders-redis"), _secret(kmock, "billing-redis")
    assert ADMIN_PASSWORD not in orders["REDIS_URL"]
    assert orders["username"] != billing["username"]

    async with (
        contextlib.aclosing(redis.Redis.from_url(orders["REDIS_URL"])) as as_orders,
        contextlib.aclosing(redis.Redis.from_url(billing["REDIS_URL"])) as as_billing,
    ):
        mine, theirs = _prefix("orders", platform), _prefix("billing", platform)
        await as_orders.set(f"{mine}cart", "3 items")
        await as_billing.set(f"{theirs}invoice", "42 EUR")
        assert await as_orders.get(f"{mine}cart") == b"3 items"
        with pytest.raises(NoPermissionError):
            await as_orders.get(f"{theirs}invoice")
        with pytest.raises(NoPermissionError):
            await as_billing.get(f"{mine}cart")
        with pytest.raises(NoPermissionError):
            await as_billing.set("regatta:items:cache", "poisoned")
        with pytest.raises(NoPermissionError):
            await as_billing.flushall()

    # A restart keeps the users (the ACL file on the volume) and the platform's password.
    chart_redis.stop()
    chart_redis.start()
    await chart_redis.ready()
    async with contextlib.aclosing(redis.Redis.from_url(orders["REDIS_URL"])) as as_orders:
        assert await as_orders.ping()

    # Rotation: a new annotation value, one new password; the old one stops working.
    rotated = api_service("orders", redis=True)
    rotated["metadata"]["annotations"] = {ROTATE_ANNOTATION: "2026-01-01"}
    await reconcile(body=rotated, settings=platform, cluster=cluster)
    renewed = _secret(kmock, "orders-redis")
    assert renewed["password"] != orders["password"]
    await reconcile(body=rotated, settings=platform, cluster=cluster)
    assert _secret(kmock, "orders-redis")["password"] == renewed["password"]
    async with contextlib.aclosing(redis.Redis.from_url(orders["REDIS_URL"])) as stale:
        with pytest.raises(AuthenticationError):
            await stale.ping()
    async with contextlib.aclosing(redis.Redis.from_url(renewed["REDIS_URL"])) as fresh:
        assert await fresh.ping()

    # Deleting the ApiService deletes its user.
    await finalize(body=rotated, settings=platform, cluster=cluster)
    async with contextlib.aclosing(redis.Redis.from_url(chart_redis.url())) as admin:
        users = await admin.acl_users()
    assert renewed["username"] not in {u.decode() if isinstance(u, bytes) else u for u in users}
    assert billing["username"] in {u.decode() if isinstance(u, bytes) else u for u in users}


@pytest.fixture
def admin_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url("postgres")


async def _connect(url: str, *, database_name: str | None = None) -> asyncpg.Connection:
    dsn = url.replace("+asyncpg", "")
    if database_name is not None:
        dsn = dsn.rsplit("/", 1)[0] + "/" + database_name
    return await asyncpg.connect(dsn, timeout=10)


@pytest.mark.postgres
async def test_two_api_services_cannot_connect_to_each_others_database(
    admin_url: str, cluster: Cluster, kmock: kmock.KubernetesEmulator, platform: PlatformSettings
) -> None:
    platform = platform.model_copy(update={"database_admin_url": admin_url})
    names = {n: database.database_name("shop", n) for n in ("payroll", "catalog")}
    try:
        for name in names:
            await reconcile(
                body=api_service(name, database=True), settings=platform, cluster=cluster
            )
        payroll = _secret(kmock, "payroll-database")["DATABASE_URL"]
        catalog = _secret(kmock, "catalog-database")["DATABASE_URL"]
        own = await _connect(payroll)
        try:
            assert await own.fetchval("SELECT current_database()") == names["payroll"]
            await own.execute("CREATE TABLE salaries (amount int)")
        finally:
            await own.close()
        # Each role into the other's database: refused at the door.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _connect(catalog, database_name=names["payroll"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _connect(payroll, database_name=names["catalog"])
    finally:
        for name in names.values():
            await database.drop(admin_url, database=name)


def _peers(values: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    rendered = render(values).get("NetworkPolicy", policy)
    return [peer for rule in rendered["spec"]["ingress"] for peer in rule["from"]]


@pytest.mark.parametrize("policy", ["regatta-postgresql", "regatta-redis"])
def test_api_service_namespaces_reach_the_data_tier_only_when_allowed(policy: str) -> None:
    off = _peers({"operator": {"enabled": True}}, policy)
    assert not [peer for peer in off if "namespaceSelector" in peer]
    selector = {"matchLabels": {"regatta.dev/tenant": "true"}}
    values = {
        "operator": {
            "enabled": True,
            "tenantAccess": {"enabled": True, "namespaceSelector": selector},
        }
    }
    on = _peers(values, policy)
    (tenants,) = [peer for peer in on if "namespaceSelector" in peer]
    assert tenants["namespaceSelector"] == selector
    # Only the ApiService pods that are clients of that store, not every pod there.
    labels = tenants["podSelector"]["matchLabels"]
    assert labels["app.kubernetes.io/instance"] == "regatta"
    client = "regatta.dev/database-client" if "postgresql" in policy else "regatta.dev/redis-client"
    assert labels[client] == "true"
