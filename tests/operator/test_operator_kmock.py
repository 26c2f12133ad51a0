"""The operator against kmock, a fake Kubernetes API: the requests it makes, and the status."""

from __future__ import annotations

from typing import Any

import httpx
import kmock
import kopf
import pytest

from regatta.operator import handlers
from regatta.operator.kube import Cluster, secret_values
from regatta.operator.reconcile import finalize, reconcile, status_changes, transitions
from regatta.operator.settings import PlatformSettings
from tests.operator.support import api_service

NOW = "2026-01-01T00:00:00Z"
DEPLOYMENTS = kmock.resource("apps/v1/deployments")


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


APPLY = "application/apply-patch+yaml"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def applies(server: kmock.KubernetesEmulator) -> list[tuple[str | None, str | None]]:
    """(plural, name) of every server-side apply, in order, each checked for its manager."""
    seen = []
    for request in server:
        if (
            request.method.value == "PATCH"
            and request.resource is not None
            and request.headers["Content-Type"].startswith(APPLY)
        ):
            assert request.params["fieldManager"] == "regatta-operator"
            assert request.params["force"] == "true"
            seen.append((request.resource.plural, request.name))
    return seen


def writes(server: kmock.KubernetesEmulator) -> list[tuple[str, str | None, str | None]]:
    return [
        (request.method.value, request.resource.plural, request.name)
        for request in server
        if request.method.value in WRITES and request.resource is not None
    ]


async def test_create_applies_every_child_with_an_owner_reference(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(replicas=2, redis=True)
    status = await reconcile(body=body, settings=platform, cluster=cluster, now=NOW)

    # Every child is one server-side apply: no create, no 409, no merge patch.
    assert requests(kmock, "POST") == []
    assert applies(kmock) == [
        # Cluster-wide, the operator's Secret rights in this namespace come first.
        ("rolebindings", "regatta-operator-secrets"),
        ("secrets", "orders-redis"),
        ("deployments", "orders"),
        ("services", "orders"),
        ("poddisruptionbudgets", "orders"),
        ("networkpolicies", "orders"),
        ("ingresses", "orders"),
        ("servicemonitors", "orders"),
    ]
    # What the spec does not ask for is looked up, and absent, not deleted.
    assert requests(kmock, "DELETE") == []
    deployment = stored(kmock, "deployments", "apps/v1")
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert owner["kind"] == "ApiService"
    assert owner["uid"] == "uid-shop-orders"
    assert owner["controller"] is True
    redis = stored(kmock, "secrets", "v1", "orders-redis")
    assert redis["metadata"]["name"] == "orders-redis"
    assert secret_values(redis)["REDIS_URL"] == "redis://:pw@regatta-redis.regatta.svc:6379/0"

    assert status["observedGeneration"] == 1
    assert status["url"] == "http://orders.shop.svc/orders"
    assert conditions(status) == {
        "Ready": ("False", "RollingOut"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
    }


def _env(deployment: Any) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value") for item in container["env"]}


async def test_a_removed_env_var_disappears_from_the_deployment(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    with_flag = api_service(env=[{"name": "FEATURE_X", "value": "on"}])
    await reconcile(body=with_flag, settings=platform, cluster=cluster)
    assert _env(stored(kmock, "deployments", "apps/v1"))["FEATURE_X"] == "on"

    before = len(list(kmock))
    await reconcile(body=api_service(generation=2), settings=platform, cluster=cluster)
    # One apply of the Deployment whose body no longer names the variable, and it is gone.
    changed = [r for r in list(kmock)[before:] if r.method.value == "PATCH"]
    assert [(r.resource.plural, r.name) for r in changed if r.resource] == [
        ("deployments", "orders")
    ]
    (apply,) = changed
    assert apply.headers["Content-Type"].startswith(APPLY)
    assert apply.params["fieldManager"] == "regatta-operator"
    assert "FEATURE_X" not in _env(apply.data)
    assert "FEATURE_X" not in _env(stored(kmock, "deployments", "apps/v1"))


async def test_an_unchanged_api_service_writes_nothing_over_three_resyncs(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(replicas=2, redis=True)
    body["status"] = await reconcile(body=body, settings=platform, cluster=cluster)
    after_create = len(list(kmock))
    for _ in range(3):  # three timer periods
        again = await reconcile(body=body, settings=platform, cluster=cluster)
        assert status_changes(body["status"], again) == {}
    later = [r for r in list(kmock)[after_create:] if r.method.value in WRITES]
    assert later == []
    assert writes(kmock)  # the first reconciliation did write


async def test_children_written_before_apply_lose_their_old_field_ownership(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service()
    await reconcile(body=body, settings=platform, cluster=cluster)
    # As the previous version left it: its merge patches own fields as an `Update` entry.
    service = stored(kmock, "services", "v1")
    update = {"manager": "regatta-operator", "operation": "Update", "fieldsType": "FieldsV1"}
    apply = {"manager": "regatta-operator", "operation": "Apply", "fieldsType": "FieldsV1"}
    service.patch({"metadata": {"managedFields": [update, apply], "annotations": None}})
    before = len(list(kmock))
    await reconcile(body=body, settings=platform, cluster=cluster)
    merges = [
        r
        for r in list(kmock)[before:]
        if r.method.value == "PATCH" and r.headers["Content-Type"].startswith("application/merge")
    ]
    assert [(r.resource.plural, r.name) for r in merges if r.resource] == [("services", "orders")]
    assert stored(kmock, "services", "v1")["metadata"]["managedFields"] == [apply]
    # Once is enough.
    before = len(list(kmock))
    await reconcile(body=body, settings=platform, cluster=cluster)
    assert not [r for r in list(kmock)[before:] if r.method.value == "PATCH"]


async def test_a_name_taken_by_another_controller_is_reported_not_fought_over(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "orders",
            "namespace": "shop",
            "managedFields": [{"manager": "helm", "operation": "Update"}],
        },
        "spec": {"ports": [{"port": 8080}]},
    }
    kmock.objects[kmock.resource("v1/services"), "shop", "orders"] = foreign
    status = await reconcile(body=api_service(), settings=platform, cluster=cluster)
    assert conditions(status)["Degraded"] == ("True", "ChildConflict")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "Service shop/orders" in degraded["message"]
    assert "helm" in degraded["message"]
    assert ("services", "orders") not in applies(kmock)
    assert stored(kmock, "services", "v1")["spec"] == {"ports": [{"port": 8080}]}


async def test_a_rollout_past_its_progress_deadline_is_degraded(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    body = api_service(replicas=2)
    body["status"] = await reconcile(body=body, settings=platform, cluster=cluster)
    stored(kmock, "deployments", "apps/v1").patch(
        {
            "status": {
                "observedGeneration": 1,
                "updatedReplicas": 1,
                "availableReplicas": 0,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "orders-5d9" has timed out progressing.',
                    }
                ],
            }
        }
    )
    status = await reconcile(body=body, settings=platform, cluster=cluster)
    assert conditions(status) == {
        "Ready": ("False", "ProgressDeadlineExceeded"),
        "Progressing": ("False", "ProgressDeadlineExceeded"),
        "Degraded": ("True", "ProgressDeadlineExceeded"),
    }
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "has timed out progressing" in degraded["message"]
    changed = transitions(body["status"]["conditions"], status["conditions"])
    assert {c["type"] for c in changed} == {"Ready", "Progressing", "Degraded"}


async def test_a_crash_looping_pod_is_degraded(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    await reconcile(body=api_service(), settings=platform, cluster=cluster)
    deployment = stored(kmock, "deployments", "apps/v1").raw
    selector = dict(deployment["spec"]["selector"]["matchLabels"])
    kmock.objects[kmock.resource("v1/pods"), "shop", "orders-5d9-x1"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-5d9-x1", "namespace": "shop", "labels": selector},
        "status": {
            "containerStatuses": [
                {
                    "name": "orders",
                    "image": "ghcr.io/example/orders:1.4.2",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                }
            ]
        },
    }
    status = await reconcile(body=api_service(), settings=platform, cluster=cluster)
    assert conditions(status)["Degraded"] == ("True", "CrashLoopBackOff")
    assert conditions(status)["Ready"] == ("False", "CrashLoopBackOff")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "orders-5d9-x1" in degraded["message"]
    assert "4 restarts" in degraded["message"]


async def test_update_scales_and_rolls_out_a_new_image(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    first = await reconcile(
        body=api_service(replicas=2), settings=platform, cluster=cluster, now="first"
    )
    changed = api_service(generation=2, replicas=4, image="ghcr.io/example/orders:1.5.0")
    changed["status"] = first
    before = len(list(kmock))
    status = await reconcile(body=changed, settings=platform, cluster=cluster, now=NOW)

    # One apply of the Deployment (the others follow the new version label).
    patches = [r for r in list(kmock)[before:] if r.method.value == "PATCH"]
    (patch,) = [r for r in patches if r.resource == DEPLOYMENTS]
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
    assert ("poddisruptionbudgets", "orders") not in applies(kmock)
    scaled = api_service(generation=2, autoscaling={"minReplicas": 2, "maxReplicas": 5})
    await reconcile(body=scaled, settings=platform, cluster=cluster)
    hpa = stored(kmock, "horizontalpodautoscalers", "autoscaling/v2")
    assert hpa["spec"]["maxReplicas"] == 5
    assert ("poddisruptionbudgets", "orders") in applies(kmock)
    # The HPA owns the replica count now: the applied Deployment no longer sets it.
    assert "replicas" not in stored(kmock, "deployments", "apps/v1")["spec"]


async def test_delete_removes_the_children_and_tolerates_missing_ones(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, platform: PlatformSettings
) -> None:
    await reconcile(body=api_service(replicas=2), settings=platform, cluster=cluster)
    body = api_service(replicas=2, database=True)
    platform = platform.model_copy(update={"database_admin_url": ""})
    before = len(requests(kmock, "DELETE"))
    await finalize(body=body, settings=platform, cluster=cluster)
    deleted = requests(kmock, "DELETE")[before:]
    # Only what exists is deleted (each child is looked up first).
    assert deleted == [
        ("ingresses", "orders"),
        ("servicemonitors", "orders"),
        ("networkpolicies", "orders"),
        ("poddisruptionbudgets", "orders"),
        ("services", "orders"),
        ("deployments", "orders"),
    ]
    # Only the operator's RoleBinding for Secrets stays, shared by the namespace's ApiServices.
    left = [key for key, obj in kmock.objects.items() if not obj.deleted]
    assert [(resource.plural, name) for resource, _, name in left] == [
        ("rolebindings", "regatta-operator-secrets")
    ]
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
    assert applies(kmock) == [("rolebindings", "regatta-operator-secrets")]


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


async def test_a_childs_event_compares_with_the_live_status_not_the_index(
    kmock: kmock.KubernetesEmulator,
    cluster: Cluster,
    platform: PlatformSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf writes the status after its handler returns, so the index can hold none yet."""
    events: list[dict[str, Any]] = []
    for level in ("info", "warn"):
        monkeypatch.setattr(kopf, level, lambda *_, **event: events.append(event))
    body = api_service(replicas=2)
    body["status"] = await reconcile(body=body, settings=platform, cluster=cluster)
    async with httpx.AsyncClient(base_url=str(kmock.url).rstrip("/")) as api:
        created = await api.post(
            "/apis/regatta.dev/v1alpha1/namespaces/shop/apiservices", json=body
        )
        assert created.status_code < 300, created.text
    stale = {key: value for key, value in body.items() if key != "status"}
    memo = kopf.Memo(
        platform=platform,
        cluster=cluster,
        locks={},
        activity={},
        shared={"bodies": {("shop", "orders"): [stale]}},
    )
    settled = len(list(kmock))
    await handlers._reconcile_from_child(("shop", "orders"), memo)
    # Nothing changed since the status was written: nothing is written again.
    assert [
        (r.method.value, r.url.path) for r in list(kmock)[settled:] if r.method.value in WRITES
    ] == []
    assert events == []  # and no transition is reported again
    assert memo.activity["lastReconcile"] != "never"
