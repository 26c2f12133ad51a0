"""kopf wiring: `kopf run -m regatta.operator.handlers`. The logic lives in reconcile.py."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf
from lightkube import AsyncClient, KubeConfig

from regatta.operator.builders import MANAGER
from regatta.operator.kube import Cluster
from regatta.operator.reconcile import finalize, reconcile, status_changes, transitions
from regatta.operator.settings import PlatformSettings, load_settings
from regatta.operator.spec import GROUP, KIND, PLURAL, VERSION
from regatta.operator.watch import Coalescer, Key, owner_of

RESOURCE = (GROUP, VERSION, PLURAL)
# The safety net: children are watched, so drift is repaired when it happens, not by the timer.
# (Read once at import; the tests shorten it to count resyncs.)
RESYNC_SECONDS = float(os.environ.get("REGATTA_OPERATOR_RESYNC_SECONDS", "60"))
# The children the operator watches: its own (labelled so), in the namespaces it serves.
CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
)
OWN_CHILDREN = {"app.kubernetes.io/managed-by": MANAGER}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount in a cluster, else $KUBECONFIG (as lightkube decides too).

    Explicit, so that the choice never depends on which client libraries happen to be installed.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Read the platform settings and open one API client for every handler."""
    # One replica with the Recreate strategy: no peering objects to keep.
    settings.peering.standalone = True
    # Progress and the last handled spec go to annotations: the status is ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # warnings and errors become Kubernetes events
    memo.platform = load_settings()
    memo.cluster = Cluster(AsyncClient(config=KubeConfig.from_env(), field_manager=MANAGER))
    # Each resource gets a shallow copy of this memo: a shared dict carries what they report.
    memo.activity = {"lastReconcile": "never"}
    # One reconciliation of an ApiService at a time, whichever event triggered it.
    memo.locks = {}
    memo.shared = {}
    memo.coalescer = Coalescer(lambda key: _reconcile_from_child(key, memo))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Close the API client."""
    coalescer: Coalescer | None = getattr(memo, "coalescer", None)
    if coalescer is not None:
        await coalescer.close()
    cluster: Cluster | None = getattr(memo, "cluster", None)
    if cluster is not None:
        await cluster.close()


@kopf.on.probe(id="lastReconcile")
def last_reconcile(memo: kopf.Memo, **_: Any) -> str:
    """When a reconciliation last finished (shown by the liveness endpoint)."""
    activity: dict[str, str] = getattr(memo, "activity", {})
    return activity.get("lastReconcile", "never")


def _lock(memo: kopf.Memo, key: Key) -> asyncio.Lock:
    locks: dict[Key, asyncio.Lock] = memo.locks
    return locks.setdefault(key, asyncio.Lock())


def _touch(memo: kopf.Memo) -> None:
    activity: dict[str, str] = memo.activity
    activity["lastReconcile"] = dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds")


@kopf.index(*RESOURCE)
def api_service_bodies(*, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    """The ApiServices as last seen, by namespace and name (for their children's events)."""
    return {_key(body): copy.deepcopy(dict(body))}


def _key(body: kopf.Body) -> Key:
    return body.metadata.namespace or "", body.metadata.name or ""


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
@kopf.on.resume(*RESOURCE)
@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def reconcile_api_service(
    *,
    body: kopf.Body,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """One reconciliation for every trigger; the status is patched only where it changed."""
    platform: PlatformSettings = memo.platform
    cluster: Cluster = memo.cluster
    async with _lock(memo, _key(body)):
        new_status = await reconcile(body=body, settings=platform, cluster=cluster)
    # The timer runs this every minute: an unchanged status is not written again.
    for key, value in status_changes(status, new_status).items():
        patch.status[key] = value
    report_transitions(body, status.get("conditions") or [], new_status["conditions"])
    _touch(memo)


async def _on_child_event(*, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A child changed or vanished: reconcile its ApiService now."""
    shared: dict[str, Any] = memo.shared
    shared["bodies"] = kwargs["api_service_bodies"]
    owner = owner_of(body)
    if owner is not None:
        coalescer: Coalescer = memo.coalescer
        coalescer.poke(owner)


for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels=OWN_CHILDREN, id=f"child-{_plural}")(
        _on_child_event
    )


async def _reconcile_from_child(key: Key, memo: kopf.Memo) -> None:
    bodies: Mapping[Key, Any] = memo.shared.get("bodies") or {}
    if not bodies.get(key):
        return  # not an ApiService this operator serves (or not seen yet)
    cluster: Cluster = memo.cluster
    async with _lock(memo, key):
        # The index trails the status the last reconciliation wrote (kopf patches it after the
        # handler returns): compared with it, an unchanged status would be written again, with
        # new transition times and events. The ApiService as the server has it is the truth.
        body = await cluster.read(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": {"name": key[1], "namespace": key[0]},
            }
        )
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return  # gone, or being deleted: the children go with it
        current = body.get("status") or {}
        new_status = await reconcile(body=body, settings=memo.platform, cluster=cluster)
        changes = status_changes(current, new_status)
        if changes:
            await cluster.patch_status(key[1], key[0], changes)
    report_transitions(body, current.get("conditions") or [], new_status["conditions"])
    _touch(memo)


def report_transitions(
    body: Mapping[str, Any], previous: list[dict[str, Any]], current: list[dict[str, Any]]
) -> None:
    """One Kubernetes event for each condition that changed: a warning when it went wrong."""
    for condition in transitions(previous, current):
        kind, status = condition["type"], condition["status"]
        message = f"{kind} is {status}: {condition['message']}"
        if kind == "Degraded" and status == "True":
            kopf.warn(cast("kopf.Body", body), reason=condition["reason"], message=message)
        else:
            kopf.info(cast("kopf.Body", body), reason=condition["reason"], message=message)


@kopf.on.delete(*RESOURCE)
async def delete_api_service(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Remove the children now; the database stays unless the spec asks for its deletion."""
    # Under the lock: a reconciliation a child's event started must not re-create them.
    async with _lock(memo, _key(body)):
        await finalize(body=body, settings=memo.platform, cluster=memo.cluster)
