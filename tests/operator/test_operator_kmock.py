"""The operator against kmock, a fake Kubernetes API: the requests it makes, and the status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster as ClusterConfig
from lightkube.config.models import User

from regatta.operator.kube import Cluster
from regatta.operator.reconcile import finalize, reconcile, status_changes
from regatta.operator.settings import PlatformSettings
from tests.operator.support import api_service

NOW = "2026-01-01T00:00:00Z"
DEPLOYMENTS = kmock.resource("apps/v1/deployments")


@pytest.fixture
async def cluster(kmock: kmock.KubernetesEmulator) -> AsyncIterator[Cluster]:
    config = KubeConfig.from_one(
        cluster=ClusterConfig(server=str(kmock.url)), user=User(token="test")
    )
    cluster = Cluster(AsyncClient(config=config, field_manager="regatta-operator"))
    yield cluster
    await cluster.close()


def requests(server: kmock.KubernetesEmulator, method: str) -> list[tuple[str | None, str]]:
    """(plural, name) of every request with this method, in order."""
    seen = []
    for request in server:
        if request.method.value == method and request.resource is not None:
            name = request.name or (request.data or {}).get("metadata", {}).get("name")
            seen.append((request.resource.plural, name))
    return seen


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def stored(
    server: kmock.KubernetesEmulator, plural: str, group_version: str, name: str = "orders"
) -> Any:
    return server.objects[kmock.resource(f"{group_version}/{plural}"), "shop", name]


async def test_create_writes_every_child_with_an_owner_reference(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(replicas=2, redis=True)
    status = await reconcile(body=body, settings=platform, cluster=cluster, now=NOW)

    assert requests(kmock, "POST") == [
        ("secrets", "orders-redis"),
        ("deployments", "orders"),
        ("services", "orders"),
        ("poddisruptionbudgets", "orders"),
        ("networkpolicies", "orders"),
        ("ingresses", "orders"),
        ("servicemonitors", "orders"),
    ]
    # What the spec does not ask for is deleted, and its absence (404) is fine.
    assert requests(kmock, "DELETE") == [
        ("secrets", "orders-database"),
        ("horizontalpodautoscalers", "orders"),
        ("httproutes", "orders"),
    ]
    assert requests(kmock, "PATCH") == []
    deployment = stored(kmock, "deployments", "apps/v1")
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert owner["kind"] == "ApiService"
    assert owner["uid"] == "uid-shop-orders"
    assert owner["controller"] is True
    redis = stored(kmock, "secrets", "v1", "orders-redis")
    assert redis["metadata"]["name"] == "orders-redis"
    assert redis["stringData"]["REDIS_URL"] == "redis://:pw@regatta-redis.regatta.svc:6379/0"

    assert status["observedGeneration"] == 1
    assert status["url"] == "http://orders.shop.svc/orders"
    assert conditions(status) == {
        "Ready": ("False", "RollingOut"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
    }


async def test_update_scales_and_rolls_out_a_new_image(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    first = await reconcile(
        body=api_service(replicas=2), settings=platform, cluster=cluster, now="first"
    )
    changed = api_service(generation=2, replicas=4, image="ghcr.io/example/orders:1.5.0")
    changed["status"] = first
    status = await reconcile(body=changed, settings=platform, cluster=cluster, now=NOW)

    # The second create meets 409 (it exists) and turns into one merge patch.
    assert requests(kmock, "POST").count(("deployments", "orders")) == 2
    patches = [r for r in kmock if r.method.value == "PATCH" and r.resource == DEPLOYMENTS]
    (patch,) = patches
    assert patch.data["spec"]["replicas"] == 4
    assert patch.data["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/example/orders:1.5.0"
    )
    deployment = stored(kmock, "deployments", "apps/v1")
    assert deployment["spec"]["replicas"] == 4
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == (
        "1.5.0"
    )
    assert status["observedGeneration"] == 2
    assert conditions(status)["Progressing"] == ("True", "RollingOut")

    # The Deployment controller reports the rollout done: the ApiService becomes Ready.
    deployment.patch(
        {
            "metadata": {"generation": 2},
            "status": {"observedGeneration": 2, "updatedReplicas": 4, "availableReplicas": 4},
        }
    )
    changed["status"] = status
    ready = await reconcile(body=changed, settings=platform, cluster=cluster, now="later")
    assert conditions(ready) == {
        "Ready": ("True", "Available"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    times = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    # Only the conditions whose status changed get a new transition time.
    assert times == {"Ready": "later", "Progressing": "later", "Degraded": "first"}


async def test_switching_to_autoscaling_adds_an_hpa(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    await reconcile(body=api_service(replicas=1), settings=platform, cluster=cluster)
    assert ("poddisruptionbudgets", "orders") not in requests(kmock, "POST")
    scaled = api_service(generation=2, autoscaling={"minReplicas": 2, "maxReplicas": 5})
    await reconcile(body=scaled, settings=platform, cluster=cluster)
    hpa = stored(kmock, "horizontalpodautoscalers", "autoscaling/v2")
    assert hpa["spec"]["maxReplicas"] == 5
    assert ("poddisruptionbudgets", "orders") in requests(kmock, "POST")


async def test_delete_removes_the_children_and_tolerates_missing_ones(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(replicas=2, database=True)
    # The database secret cannot be written without a database: only the workloads exist.
    platform = platform.model_copy(update={"database_admin_url": ""})
    await reconcile(body=body, settings=platform, cluster=cluster)
    before = len(requests(kmock, "DELETE"))
    await finalize(body=body, settings=platform, cluster=cluster)
    deleted = requests(kmock, "DELETE")[before:]
    assert deleted == [
        ("ingresses", "orders"),
        ("httproutes", "orders"),
        ("servicemonitors", "orders"),
        ("networkpolicies", "orders"),
        ("poddisruptionbudgets", "orders"),
        ("horizontalpodautoscalers", "orders"),
        ("services", "orders"),
        ("deployments", "orders"),
        ("secrets", "orders-database"),
        ("secrets", "orders-redis"),
    ]
    assert not [key for key, obj in kmock.objects.items() if not obj.deleted]
    # A second deletion (the finalizer retried) finds nothing and does not fail.
    await finalize(body=body, settings=platform, cluster=cluster)


async def test_a_bad_spec_is_reported_and_nothing_is_written(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(autoscaling={"minReplicas": 6, "maxReplicas": 3})
    status = await reconcile(body=body, settings=platform, cluster=cluster)
    assert len(kmock) == 0
    assert conditions(status) == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "minReplicas (6) exceeds autoscaling.maxReplicas (3)" in degraded["message"]
    assert "url" not in status


async def test_a_name_of_the_platform_is_refused_in_its_namespace(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(name="items", namespace="regatta")
    status = await reconcile(body=body, settings=platform, cluster=cluster)
    assert len(kmock) == 0
    assert conditions(status)["Degraded"] == ("True", "InvalidSpec")
    elsewhere = await reconcile(
        body=api_service(name="items", namespace="shop"), settings=platform, cluster=cluster
    )
    assert conditions(elsewhere)["Degraded"] == ("False", "AsExpected")


async def test_a_database_without_an_admin_connection_is_degraded(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    platform = platform.model_copy(update={"database_admin_url": ""})
    status = await reconcile(body=api_service(database=True), settings=platform, cluster=cluster)
    assert conditions(status)["Degraded"] == ("True", "DatabaseUnavailable")
    assert requests(kmock, "POST") == []


async def test_only_the_status_that_changed_is_patched(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(replicas=2)
    first = await reconcile(body=body, settings=platform, cluster=cluster)
    assert status_changes({}, first) == first

    # The timer fires again with nothing changed: nothing to patch.
    body["status"] = first
    again = await reconcile(body=body, settings=platform, cluster=cluster)
    assert status_changes(first, again) == {}

    # A new generation changes observedGeneration and the conditions, not the URL.
    newer = api_service(replicas=3, generation=2)
    newer["status"] = first
    third = await reconcile(body=newer, settings=platform, cluster=cluster)
    assert set(status_changes(first, third)) == {"observedGeneration", "conditions"}
