"""Uninstalling the operator leaves no ApiService stuck on kopf's finalizer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster as ClusterConfig
from lightkube.config.models import User

from regatta.operator.uninstall import KOPF_FINALIZER, release
from tests.chart.manifests import pod_spec, render
from tests.operator.support import api_service

API_SERVICES = "regatta.dev/v1alpha1/apiservices"


@pytest.fixture
async def client(kmock: kmock.KubernetesEmulator) -> AsyncIterator[AsyncClient]:
    kmock.resources[API_SERVICES] = kmock.ResourceInfo(
        kind="ApiService",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
    )
    config = KubeConfig.from_one(
        cluster=ClusterConfig(server=str(kmock.url)), user=User(token="test")
    )
    client = AsyncClient(config=config)
    yield client
    await client.close()


def _finalized(name: str, namespace: str, *finalizers: str) -> dict[str, Any]:
    body = api_service(name=name, namespace=namespace)
    body["metadata"]["finalizers"] = list(finalizers)
    body["metadata"]["resourceVersion"] = "7"
    return body


def _stored(server: kmock.KubernetesEmulator, namespace: str, name: str) -> Any:
    obj = server.objects[kmock.resource(API_SERVICES), namespace, name]
    return None if obj.deleted else obj.raw


async def test_the_hook_removes_kopfs_finalizer_everywhere_and_only_it(
    kmock: kmock.KubernetesEmulator, client: AsyncClient
) -> None:
    resource = kmock.resource(API_SERVICES)
    kmock.objects[resource, "shop", "orders"] = _finalized("orders", "shop", KOPF_FINALIZER)
    kmock.objects[resource, "bank", "ledger"] = _finalized(
        "ledger", "bank", KOPF_FINALIZER, "example.com/backup"
    )
    kmock.objects[resource, "bank", "plain"] = _finalized("plain", "bank")

    released = await release(client)

    assert sorted(released) == ["bank/ledger", "shop/orders"]
    assert not _stored(kmock, "shop", "orders")["metadata"].get("finalizers")
    assert _stored(kmock, "bank", "ledger")["metadata"]["finalizers"] == ["example.com/backup"]
    # The ApiServices stay (their services keep running); nothing is deleted.
    assert not [r for r in kmock if r.method.value == "DELETE"]

    # Deleting one now, with no operator, completes at once.
    deleted = await kmock.delete(
        f"/apis/{API_SERVICES.rsplit('/', 1)[0]}/namespaces/shop/apiservices/orders"
    )
    assert deleted.status < 300
    assert _stored(kmock, "shop", "orders") is None


async def test_delete_first_removes_them_and_releases_the_stragglers(
    kmock: kmock.KubernetesEmulator, client: AsyncClient
) -> None:
    resource = kmock.resource(API_SERVICES)
    kmock.objects[resource, "shop", "orders"] = _finalized("orders", "shop", KOPF_FINALIZER)
    # No operator answers here: the deletion waits, then the finalizer is released.
    released = await release(client, delete=True, wait_seconds=0.3, poll_seconds=0.05)
    assert released == ["shop/orders"]
    assert _stored(kmock, "shop", "orders") is None


@pytest.mark.parametrize("cluster_wide", [True, False])
def test_the_chart_runs_it_after_the_operator_is_gone(*, cluster_wide: bool) -> None:
    rendered = render({"operator": {"enabled": True, "clusterWide": cluster_wide}})
    job = rendered.get("Job", "regatta-operator-uninstall")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    (container,) = pod_spec(job)["containers"]
    assert container["args"][:3] == ["python", "-m", "regatta.operator.uninstall"]
    assert ("--namespace=regatta" in container["args"]) is not cluster_wide
    role_kind = "ClusterRole" if cluster_wide else "Role"
    role = rendered.get(role_kind, "regatta-operator-uninstall")
    assert role["rules"] == [
        {"apiGroups": ["regatta.dev"], "resources": ["apiservices"], "verbs": ["list", "patch"]}
    ]
    # Its own account and role exist before it (hook weights): the release's are gone by then.
    for kind, name in [
        ("ServiceAccount", "regatta-operator-uninstall"),
        (role_kind, "regatta-operator-uninstall"),
        (f"{role_kind}Binding", "regatta-operator-uninstall"),
    ]:
        annotations = rendered.get(kind, name)["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-delete"
        assert int(annotations["helm.sh/hook-weight"]) < 0
    assert pod_spec(job)["serviceAccountName"] == "regatta-operator-uninstall"
    off = render({"operator": {"enabled": True, "releaseOnUninstall": False}})
    assert "regatta-operator-uninstall" not in {j["metadata"]["name"] for j in off.kind("Job")}
