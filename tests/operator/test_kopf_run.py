"""The real operator (kopf with regatta.operator.handlers) running against kmock.

kmock plays the Kubernetes API: kopf discovers the ApiService resource, watches it, and the
handlers write the children; the test acts as `kubectl`, changing and deleting the resource
over HTTP, and waits for the outcome the operator should produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import kopf
import pytest
import yaml
from daemons import free_port

import regatta.operator.handlers  # noqa: F401 - registers the handlers with kopf
from regatta.operator.settings import CONFIG_VARIABLE
from tests.eventually import eventually
from tests.operator.support import api_service, chart_environment

API_SERVICES = "regatta.dev/v1alpha1/apiservices"
# An upper bound only, never an expectation: each wait returns as soon as its condition holds.
PATIENCE_SECONDS = 30


WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def writes(requests: list[Any]) -> list[tuple[str, str]]:
    """The requests that change something, as (method, path)."""
    return [(r.method.value, r.url.path) for r in requests if r.method.value in WRITES]


async def quiet(server: kmock.KubernetesEmulator, *, seconds: float) -> int:
    """Wait until the server has had no write for `seconds`; the request count at that point.

    The operator's last writes after an event (its status, kopf's annotations, the
    reconciliations the children's events started) land when the machine lets them: a fixed
    sleep would cut the window short on a loaded one. An operator that never stops writing
    never gets here (the patience runs out).
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(PATIENCE_SECONDS + seconds):
        seen, since = -1, loop.time()
        while True:
            requests = list(server)
            count = len(writes(requests))
            if count != seen:
                seen, since = count, loop.time()
            elif loop.time() - since >= seconds:
                return len(requests)
            await asyncio.sleep(0.05)


def live(server: kmock.KubernetesEmulator, resource: str, name: str) -> dict[str, Any] | None:
    key = (kmock.resource(resource), "shop", name)
    if key not in server.objects or server.objects[key].deleted:
        return None
    raw: dict[str, Any] = server.objects[key].raw
    return raw


def handled(server: kmock.KubernetesEmulator, name: str) -> bool:
    """Whether kopf finished the creation handler (it records the spec it handled)."""
    body = live(server, API_SERVICES, name) or {}
    annotations = body.get("metadata", {}).get("annotations") or {}
    return "regatta.dev/last-handled-configuration" in annotations and bool(conditions(body))


def conditions(body: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    status = (body or {}).get("status") or {}
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


@pytest.fixture
def environment(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's environment as the chart sets it, and a kubeconfig naming kmock."""
    # kopf's backbone: it follows namespaces and CRDs besides the resources it serves.
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"list", "watch"}
    )
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch"}
    )
    # The children the operator watches (its own, by label) to repair drift.
    for resource, kind in [
        ("apps/v1/deployments", "Deployment"),
        ("v1/services", "Service"),
        ("autoscaling/v2/horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ]:
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind,
            namespaced=True,
            subresources={"status"},
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        )
    kmock.resources[API_SERVICES] = kmock.ResourceInfo(
        kind="ApiService",
        namespaced=True,
        singular="apiservice",
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
    )
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url)}}],
        "users": [{"name": "test", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
        "current-context": "kmock",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig), encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(path))
    # Redis users need a real Redis (test_tenants.py); here the shared URL stands in.
    config = {**json.loads(chart_environment()[CONFIG_VARIABLE]), "redisUsers": False}
    monkeypatch.setenv(CONFIG_VARIABLE, json.dumps(config))
    monkeypatch.setenv("REDIS_URL", "redis://:pw@regatta-redis:6379/0")
    monkeypatch.delenv("DATABASE_ADMIN_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


@contextlib.asynccontextmanager
async def running_operator(
    server: kmock.KubernetesEmulator, *, liveness: str
) -> AsyncIterator[httpx.AsyncClient]:
    """kopf running in this event loop against kmock; yields a client acting as kubectl.

    Entered and left in the test's own task: on stopping, kopf cancels the tasks started
    while it ran, and a fixture's teardown would be one of them.
    """
    # The namespace is given; kopf need not list namespaces or watch CRDs (kmock cannot list
    # the core group's namespaces).
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            settings=settings,
            clusterwide=False,
            namespaces=["shop"],
            standalone=True,
            stop_flag=stop,
            ready_flag=ready,
            liveness_endpoint=liveness,
        )
    )
    try:
        async with httpx.AsyncClient(
            base_url=str(server.url).rstrip("/") + "/apis/regatta.dev/v1alpha1"
        ) as kubectl:
            await asyncio.wait_for(ready.wait(), PATIENCE_SECONDS)
            yield kubectl
    finally:
        stop.set()
        await asyncio.wait_for(task, PATIENCE_SECONDS)


@pytest.mark.usefixtures("environment")
async def test_create_update_bad_spec_and_delete(kmock: kmock.KubernetesEmulator) -> None:
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    async with running_operator(kmock, liveness=liveness) as kubectl:
        await _create_update_bad_spec_and_delete(kubectl, kmock)
        # The liveness endpoint (`--liveness` in the chart) reports the probe.
        async with httpx.AsyncClient() as client:
            health = await client.get(liveness)
        assert health.status_code == 200
        assert health.json()["lastReconcile"] != "never"


async def _create_update_bad_spec_and_delete(
    kubectl: httpx.AsyncClient, kmock: kmock.KubernetesEmulator
) -> None:
    body = api_service(replicas=2, redis=True)
    # kopf guards its JSON patches with the resourceVersion it saw; kmock keeps what it is given.
    body["metadata"]["resourceVersion"] = "1"
    created = await kubectl.post("/namespaces/shop/apiservices", json=body)
    assert created.status_code < 300, created.text

    # The status is written once every child is: wait for it, then look at the children.
    resource = await eventually(lambda: conditions(live(kmock, API_SERVICES, "orders")))
    assert resource["Degraded"] == ("False", "AsExpected")
    orders = live(kmock, API_SERVICES, "orders")
    assert orders is not None
    assert orders["status"]["url"] == "http://orders.shop.svc/orders"
    assert orders["metadata"]["finalizers"]
    deployment = live(kmock, "apps/v1/deployments", "orders")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["ownerReferences"][0]["name"] == "orders"
    assert live(kmock, "v1/services", "orders")
    assert live(kmock, "v1/secrets", "orders-redis")

    # Scale and roll out a new image.
    change = {"spec": {"replicas": 4, "image": "ghcr.io/example/orders:1.5.0"}}
    patched = await kubectl.patch(
        "/namespaces/shop/apiservices/orders",
        content=json.dumps(change),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code < 300, patched.text

    def rolled_out() -> bool:
        current = live(kmock, "apps/v1/deployments", "orders") or {}
        container = current["spec"]["template"]["spec"]["containers"][0]
        return bool(current["spec"]["replicas"] == 4 and container["image"].endswith(":1.5.0"))

    await eventually(rolled_out)

    # A spec the schema would have caught: reported, and nothing built for it.
    bad = api_service(name="broken", autoscaling={"minReplicas": 5, "maxReplicas": 2})
    bad["metadata"]["resourceVersion"] = "1"
    await kubectl.post("/namespaces/shop/apiservices", json=bad)
    reported = await eventually(lambda: conditions(live(kmock, API_SERVICES, "broken")))
    assert reported["Degraded"] == ("True", "InvalidSpec")
    assert live(kmock, "apps/v1/deployments", "broken") is None

    # Deletion: the children go, then kopf releases the finalizer and the resource is gone.
    deleted = await kubectl.delete("/namespaces/shop/apiservices/orders")
    assert deleted.status_code < 300, deleted.text
    await eventually(lambda: live(kmock, API_SERVICES, "orders") is None)
    assert live(kmock, "apps/v1/deployments", "orders") is None
    assert live(kmock, "v1/services", "orders") is None
    assert live(kmock, "v1/secrets", "orders-redis") is None


# kopf.run() as `kopf run --standalone -n shop` does it, without scanning namespaces (which
# kmock cannot list).
RUN_OPERATOR = """
import kopf
import regatta.operator.handlers
settings = kopf.OperatorSettings()
settings.scanning.disabled = True
kopf.run(settings=settings, standalone=True, clusterwide=False, namespaces=["shop"])
"""

# The bound; the timer (60 s) cannot meet it, only the watch on the children can.
REPAIR_SECONDS = 5


@pytest.mark.usefixtures("environment")
async def test_drift_is_repaired_and_a_stuck_rollout_reported(
    kmock: kmock.KubernetesEmulator,
) -> None:
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    async with (
        running_operator(kmock, liveness=liveness) as kubectl,
        httpx.AsyncClient(base_url=str(kmock.url).rstrip("/")) as api,
    ):
        body = api_service(replicas=2)
        body["metadata"]["resourceVersion"] = "1"
        created = await kubectl.post("/namespaces/shop/apiservices", json=body)
        assert created.status_code < 300, created.text
        await eventually(lambda: handled(kmock, "orders"))
        assert live(kmock, "v1/services", "orders")

        # The operator's own writes come back as watch events: they must settle, not loop.
        settled = await quiet(kmock, seconds=1)
        await asyncio.sleep(1)
        assert writes(list(kmock)[settled:]) == []

        # Someone deletes the Service: it is back within seconds, long before the timer.
        deleted = await api.delete("/api/v1/namespaces/shop/services/orders")
        assert deleted.status_code < 300, deleted.text
        assert live(kmock, "v1/services", "orders") is None
        await eventually(lambda: live(kmock, "v1/services", "orders"), within=REPAIR_SECONDS)

        # Someone scales the Deployment by hand: the ApiService's count is restored.
        merge = {"Content-Type": "application/merge-patch+json"}
        scaled = await api.patch(
            "/apis/apps/v1/namespaces/shop/deployments/orders",
            content=json.dumps({"spec": {"replicas": 7}}),
            headers=merge,
        )
        assert scaled.status_code < 300, scaled.text

        def replicas() -> int:
            return int((live(kmock, "apps/v1/deployments", "orders") or {})["spec"]["replicas"])

        await eventually(lambda: replicas() == 2, within=REPAIR_SECONDS)

        # The Deployment controller gives up on the rollout: the ApiService says so, with why.
        stuck = {
            "status": {
                "observedGeneration": 1,
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
        await api.patch(
            "/apis/apps/v1/namespaces/shop/deployments/orders/status",
            content=json.dumps(stuck),
            headers=merge,
        )
        reported = await eventually(
            lambda: (
                conditions(live(kmock, API_SERVICES, "orders")).get("Degraded")
                == ("True", "ProgressDeadlineExceeded")
            ),
            within=REPAIR_SECONDS,
        )
        assert reported
        orders = live(kmock, API_SERVICES, "orders") or {}
        degraded = next(c for c in orders["status"]["conditions"] if c["type"] == "Degraded")
        assert "has timed out progressing" in degraded["message"]


@pytest.mark.usefixtures("environment")
async def test_an_unchanged_api_service_is_not_written_over_three_resyncs(
    kmock: kmock.KubernetesEmulator,
) -> None:
    """The operator in a process of its own, its timer shortened to half a second.

    The resync interval is read when the handlers are imported: this process has them already.
    """
    resync = 0.5
    env = {**os.environ, "REGATTA_OPERATOR_RESYNC_SECONDS": str(resync)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN_OPERATOR,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(
            base_url=str(kmock.url).rstrip("/") + "/apis/regatta.dev/v1alpha1"
        ) as kubectl:
            body = api_service(replicas=2, redis=True)
            body["metadata"]["resourceVersion"] = "1"
            created = await kubectl.post("/namespaces/shop/apiservices", json=body)
            assert created.status_code < 300, created.text
            await eventually(lambda: handled(kmock, "orders"))

            def reads() -> int:
                return sum(1 for r in kmock if r.method.value == "GET" and r.name == "orders")

            # The first tick may still write the status: wait for two write-free periods.
            settled = await quiet(kmock, seconds=2 * resync)
            reads_before = reads()
            await asyncio.sleep(3 * resync + resync / 2)
            assert writes(list(kmock)[settled:]) == []
            # The timer did run in between: each tick reads the children again.
            assert reads() > reads_before
    finally:
        process.terminate()
        await process.wait()
