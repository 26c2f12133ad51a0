"""kopf wiring: `kopf run -m regatta.operator.handlers`. The logic lives in reconcile.py."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf
from lightkube import AsyncClient, KubeConfig

from regatta.operator.builders import MANAGER
from regatta.operator.kube import Cluster
from regatta.operator.reconcile import finalize, reconcile, status_changes, transitions
from regatta.operator.settings import PlatformSettings, load_settings
from regatta.operator.spec import GROUP, PLURAL, VERSION

RESOURCE = (GROUP, VERSION, PLURAL)
RESYNC_SECONDS = 60.0


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


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Close the API client."""
    cluster: Cluster | None = getattr(memo, "cluster", None)
    if cluster is not None:
        await cluster.close()


@kopf.on.probe(id="lastReconcile")
def last_reconcile(memo: kopf.Memo, **_: Any) -> str:
    """When a reconciliation last finished (shown by the liveness endpoint)."""
    activity: dict[str, str] = getattr(memo, "activity", {})
    return activity.get("lastReconcile", "never")


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
@kopf.on.resume(*RESOURCE)
@kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def reconcile_api_service(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """One reconciliation for every trigger; the status is patched only where it changed."""
    platform: PlatformSettings = memo.platform
    cluster: Cluster = memo.cluster
    new_status = await reconcile(body=body, settings=platform, cluster=cluster)
    # The timer runs this every minute: an unchanged status is not written again.
    for key, value in status_changes(status, new_status).items():
        patch.status[key] = value
    report_transitions(body, status.get("conditions") or [], new_status["conditions"])
    activity: dict[str, str] = memo.activity
    activity["lastReconcile"] = dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds")


def report_transitions(
    body: kopf.Body, previous: list[dict[str, Any]], current: list[dict[str, Any]]
) -> None:
    """One Kubernetes event for each condition that changed: a warning when it went wrong."""
    for condition in transitions(previous, current):
        kind, status = condition["type"], condition["status"]
        message = f"{kind} is {status}: {condition['message']}"
        if kind == "Degraded" and status == "True":
            kopf.warn(body, reason=condition["reason"], message=message)
        else:
            kopf.info(body, reason=condition["reason"], message=message)


@kopf.on.delete(*RESOURCE)
async def delete_api_service(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Remove the children now; the database stays unless the spec asks for its deletion."""
    await finalize(body=body, settings=memo.platform, cluster=memo.cluster)
