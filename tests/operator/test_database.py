"""Database provisioning against a real Postgres: idempotent, safe names, no SQL injection."""

from __future__ import annotations

import asyncpg
import kmock
import pytest

from regatta.operator import database
from regatta.operator.kube import Cluster, secret_values
from regatta.operator.reconcile import finalize, reconcile
from regatta.operator.settings import PlatformSettings
from tests.operator.support import api_service
from tests.servers import PostgresServer


def test_names_are_safe_unique_and_short() -> None:
    name = database.database_name("shop", "orders")
    assert name.startswith("api_shop_orders_")
    assert name != database.database_name("shop-orders", "x")
    assert database.database_name("a-b", "c") != database.database_name("a", "b-c")
    long = database.database_name("n" * 63, "x" * 253)
    assert len(long) <= 63
    assert long != database.database_name("n" * 63, "x" * 252)
    hostile = database.database_name("shop", 'x"; DROP DATABASE postgres; --')
    assert set(hostile) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")


def test_the_service_url_reaches_the_platform_from_any_namespace() -> None:
    url = database.service_database_url(
        "postgresql+asyncpg://regatta:admin@regatta-postgresql:5432/regatta",
        database="api_shop_orders_1",
        password="p-w_",
        namespace="regatta",
    )
    assert url == (
        "postgresql+asyncpg://api_shop_orders_1:p-w_@regatta-postgresql.regatta.svc:5432/api_shop_orders_1"
    )


@pytest.fixture
def admin_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url("postgres")


async def _connects(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=10)
    except asyncpg.InvalidPasswordError:
        return False
    try:
        return bool(await connection.fetchval("SELECT current_user = current_database()"))
    finally:
        await connection.close()


async def _password_hash(admin_url: str, name: str) -> str:
    connection = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
    try:
        return str(
            await connection.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", name)
        )
    finally:
        await connection.close()


async def _exists(admin_url: str, name: str) -> tuple[bool, bool]:
    connection = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
    try:
        role = await connection.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name)
        db = await connection.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
    finally:
        await connection.close()
    return bool(role), bool(db)


def _url(admin_url: str, name: str, password: str) -> str:
    return database.service_database_url(admin_url, database=name, password=password, namespace="x")


@pytest.mark.postgres
async def test_provisioning_is_idempotent_and_keeps_the_password_current(admin_url: str) -> None:
    name = database.database_name("shop", "orders-idempotent")
    try:
        await database.provision(admin_url, database=name, password="first")
        first = await _password_hash(admin_url, name)
        await database.provision(admin_url, database=name, password="first")
        assert await _exists(admin_url, name) == (True, True)
        assert await _connects(_url(admin_url, name, "first"))
        # The role's password follows the Secret (the test server trusts local connections,
        # so the stored SCRAM verifier is what shows the change).
        assert first.startswith("SCRAM-SHA-256$")
        await database.provision(admin_url, database=name, password="second")
        assert await _password_hash(admin_url, name) != first
    finally:
        await database.drop(admin_url, database=name)
    assert await _exists(admin_url, name) == (False, False)
    await database.drop(admin_url, database=name)  # dropping what is gone is fine


@pytest.mark.postgres
async def test_identifiers_and_passwords_are_quoted_by_postgres(admin_url: str) -> None:
    # Even a name that never came through database_name() cannot inject SQL.
    hostile = 'evil"; DROP DATABASE postgres; --'
    password = 'it\'s "quoted"; DROP ROLE postgres; --'
    try:
        await database.provision(admin_url, database=hostile, password=password)
        assert await _exists(admin_url, hostile) == (True, True)
        assert await _exists(admin_url, "postgres") == (True, True)
        assert (await _password_hash(admin_url, hostile)).startswith("SCRAM-SHA-256$")
        assert await _connects(_url(admin_url, hostile, password))
    finally:
        await database.drop(admin_url, database=hostile)
    assert await _exists(admin_url, hostile) == (False, False)


@pytest.mark.postgres
async def test_an_api_service_gets_a_working_database_url_kept_across_reconciles(
    admin_url: str, cluster: Cluster, kmock: kmock.KubernetesEmulator, platform: PlatformSettings
) -> None:
    platform = platform.model_copy(update={"database_admin_url": admin_url})
    body = api_service(name="ledger", database=True, databaseDeletionPolicy="Retain")
    name = database.database_name("shop", "ledger")
    key = (kmock.resource("v1/secrets"), "shop", "ledger-database")
    try:
        status = await reconcile(body=body, settings=platform, cluster=cluster)
        assert {c["type"]: c["status"] for c in status["conditions"]}["Degraded"] == "False"
        first = secret_values(kmock.objects[key].raw)
        assert await _connects(first["DATABASE_URL"])

        await reconcile(body=body, settings=platform, cluster=cluster)
        assert secret_values(kmock.objects[key].raw) == first
        assert await _connects(first["DATABASE_URL"])

        # Deleting the ApiService keeps the database unless the spec says Delete.
        await finalize(body=body, settings=platform, cluster=cluster)
        assert await _exists(admin_url, name) == (True, True)
        body["spec"]["databaseDeletionPolicy"] = "Delete"
        await finalize(body=body, settings=platform, cluster=cluster)
        assert await _exists(admin_url, name) == (False, False)
    finally:
        await database.drop(admin_url, database=name)


@pytest.mark.postgres
async def test_an_unreachable_database_is_degraded_not_a_crash(
    cluster: Cluster, platform: PlatformSettings, postgres_server: PostgresServer
) -> None:
    unreachable = f"postgresql://nobody@127.0.0.1:{postgres_server.port}/postgres"
    platform = platform.model_copy(update={"database_admin_url": unreachable})
    status = await reconcile(body=api_service(database=True), settings=platform, cluster=cluster)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "DatabaseProvisioningFailed")
