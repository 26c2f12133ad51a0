"""Reconcile by state: whatever happened, build what the ApiService should be and make it so.

`reconcile()` runs on create, update, resume and on a timer; it never raises for a bad spec or
an unreachable database, it reports them in the status conditions (`Ready`, `Progressing`,
`Degraded`) and tries again on the next tick. `finalize()` runs on deletion.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import kopf
from redis.exceptions import RedisError

from regatta.operator import database, redis_users
from regatta.operator.builders import (
    DATABASE_CONNECTION_SUFFIX,
    REDIS_CONNECTION_SUFFIX,
    Manifest,
    Target,
    build_children,
    build_secret,
    build_secret_access,
    desired_replicas,
    redis_key_prefix,
    service_url,
    stub,
)
from regatta.operator.kube import ChildConflictError, Cluster, HttpError, secret_values
from regatta.operator.settings import PlatformSettings
from regatta.operator.spec import ApiServiceSpec, InvalidSpecError, parse_spec

logger = logging.getLogger(__name__)

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")
# Set (or change) it on an ApiService: its database and Redis passwords are replaced once.
ROTATE_ANNOTATION = "regatta.dev/rotate-credentials"


@dataclass(frozen=True)
class Condition:
    """One standard condition (metav1.Condition without the bookkeeping)."""

    type: str
    status: bool
    reason: str
    message: str


def failed(reason: str, message: str, *, waiting: str) -> list[Condition]:
    """The conditions of a service that cannot converge until something changes."""
    return [
        Condition("Ready", status=False, reason=reason, message="see the Degraded condition"),
        Condition("Progressing", status=False, reason=reason, message=waiting),
        Condition("Degraded", status=True, reason=reason, message=message),
    ]


def converged(*, ready: bool, message: str) -> list[Condition]:
    """The conditions once every child is written: ready, or rolling out."""
    return [
        Condition(
            "Ready", status=ready, reason="Available" if ready else "RollingOut", message=message
        ),
        Condition(
            "Progressing",
            status=not ready,
            reason="Complete" if ready else "RollingOut",
            message=message,
        ),
        Condition(
            "Degraded", status=False, reason="AsExpected", message="every object is in place"
        ),
    ]


class _DegradedError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _now() -> str:
    return dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_conditions(
    conditions: Sequence[Condition],
    *,
    generation: int,
    previous: Sequence[Mapping[str, Any]] = (),
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Conditions as the API wants them; a transition time changes only when the status does."""
    before = {item.get("type"): item for item in previous}
    timestamp = now or _now()
    rendered = []
    for condition in conditions:
        status = "True" if condition.status else "False"
        old = before.get(condition.type) or {}
        changed = old.get("status") != status
        rendered.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "observedGeneration": generation,
                "lastTransitionTime": timestamp if changed else old["lastTransitionTime"],
            }
        )
    return rendered


# Reasons a pod's container waits that no amount of waiting repairs.
_STUCK_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
    }
)


def _rollout(deployment: Manifest | None, want: int) -> tuple[bool, str]:
    """Whether the Deployment runs the current template on enough available replicas.

    Raises _DegradedError when the rollout exceeded its progress deadline.
    """
    if deployment is None:
        return False, "the Deployment does not exist yet"
    status = deployment.get("status") or {}
    generation = deployment.get("metadata", {}).get("generation", 0)
    replicas = deployment.get("spec", {}).get("replicas", want)
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "Progressing"
            and condition.get("status") == "False"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            raise _DegradedError(
                "ProgressDeadlineExceeded",
                condition.get("message") or "the rollout exceeded its progress deadline",
            )
    if status.get("observedGeneration", 0) < generation:
        return False, "the Deployment controller has not seen the latest template yet"
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < replicas or available < replicas:
        return False, f"{available} of {replicas} replicas available, {updated} updated"
    return True, f"{available} of {replicas} replicas available"


def stuck_pods(pods: Sequence[Manifest]) -> tuple[str, str] | None:
    """(reason, message) when a container of these pods waits in a state it cannot leave."""
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in _STUCK_REASONS:
                name = pod.get("metadata", {}).get("name", "?")
                detail = waiting.get("message") or ""
                restarts = container.get("restartCount", 0)
                message = f"pod {name}, container {container.get('name')}: {reason}"
                message += f" ({restarts} restarts)" if restarts else ""
                return reason, f"{message}{': ' + detail if detail else ''}"
    return None


def _with_fqdn(url: str, namespace: str) -> str:
    # The platform's own Services are named without a domain inside its namespace.
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or "." in host or host == "localhost":
        return url
    netloc = parts.netloc.replace(f"@{host}", f"@{host}.{namespace}.svc", 1)
    if "@" not in parts.netloc:
        netloc = parts.netloc.replace(host, f"{host}.{namespace}.svc", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def _credentials(
    target: Target, cluster: Cluster, suffix: str, rotation: str
) -> tuple[str, str]:
    """The password kept in the connection Secret, or a new one (none yet, or rotation asked).

    Returns (password, rotation): the rotation token the Secret records, so that a changed
    `regatta.dev/rotate-credentials` annotation on the ApiService makes exactly one new password.
    """
    existing = await cluster.read(stub("Secret", target.name + suffix, target.namespace))
    values = secret_values(existing) if existing else {}
    password = values.get("password", "")
    if not password or values.get("rotation", "") != rotation:
        password = database.new_password()
    return password, rotation


async def _database_secret(
    target: Target, settings: PlatformSettings, cluster: Cluster, rotation: str
) -> Manifest:
    """Provision the service's database and return the Secret holding its DATABASE_URL."""
    if not settings.database_admin_url:
        raise _DegradedError(
            "DatabaseUnavailable", "the operator has no database admin connection configured"
        )
    name = database.database_name(target.namespace, target.name)
    password, rotation = await _credentials(target, cluster, DATABASE_CONNECTION_SUFFIX, rotation)
    try:
        await database.provision(settings.database_admin_url, database=name, password=password)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        logger.warning("provisioning database %s failed: %s", name, exc)
        raise _DegradedError(
            "DatabaseProvisioningFailed", f"database {name}: {type(exc).__name__}"
        ) from exc
    url = database.service_database_url(
        settings.database_admin_url, database=name, password=password, namespace=settings.namespace
    )
    data = {"DATABASE_URL": url, "username": name, "password": password, "database": name}
    return build_secret(
        target,
        settings,
        suffix=DATABASE_CONNECTION_SUFFIX,
        data={**data, "rotation": rotation},
    )


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _redis_secret(
    target: Target, settings: PlatformSettings, cluster: Cluster, rotation: str
) -> Manifest:
    """The Secret holding the service's REDIS_URL: its own ACL user, confined to its prefix."""
    if not settings.redis_url:
        raise _DegradedError("RedisUnavailable", "the operator has no Redis connection configured")
    platform_url = _with_fqdn(settings.redis_url, settings.namespace)
    if not settings.redis_users:
        # The admin chose a shared Redis without users (a managed Redis without ACLs).
        return build_secret(
            target, settings, suffix=REDIS_CONNECTION_SUFFIX, data={"REDIS_URL": platform_url}
        )
    user = redis_users.user_name(target.namespace, target.name)
    password, rotation = await _credentials(target, cluster, REDIS_CONNECTION_SUFFIX, rotation)
    prefix = redis_key_prefix(target, settings)
    try:
        await redis_users.provision(settings.redis_url, user=user, password=password, prefix=prefix)
    except (OSError, TimeoutError, RedisError) as exc:
        logger.warning("provisioning Redis user %s failed: %s", user, exc)
        raise _DegradedError(
            "RedisProvisioningFailed", f"Redis user {user}: {type(exc).__name__}"
        ) from exc
    data = {
        "REDIS_URL": _with_user(platform_url, user, password),
        "username": user,
        "password": password,
        "rotation": rotation,
    }
    return build_secret(target, settings, suffix=REDIS_CONNECTION_SUFFIX, data=data)


def _check_name(target: Target, settings: PlatformSettings) -> None:
    if target.namespace == settings.namespace and target.name in settings.reserved_names:
        msg = f"the name {target.name!r} belongs to one of the platform's own workloads"
        raise InvalidSpecError(msg)


async def _converge(
    target: Target, settings: PlatformSettings, cluster: Cluster, *, owner: Mapping[str, Any]
) -> Manifest | None:
    """Write every child, adopted by the owner; returns the Deployment as the server has it."""
    spec = target.spec
    access = build_secret_access(target.namespace, settings)
    if access is not None:
        # Secret rights in this namespace before any Secret is read or written. Shared by
        # every ApiService of the namespace: no owner, it outlives each of them.
        await cluster.apply(access)
    annotations = owner["metadata"].get("annotations") or {}
    rotation = str(annotations.get(ROTATE_ANNOTATION, ""))
    connection_secrets: list[Manifest] = []
    unwanted: list[Manifest] = []
    if spec.database:
        connection_secrets.append(await _database_secret(target, settings, cluster, rotation))
    else:
        unwanted.append(stub("Secret", target.name + DATABASE_CONNECTION_SUFFIX, target.namespace))
    if spec.redis:
        connection_secrets.append(await _redis_secret(target, settings, cluster, rotation))
    else:
        unwanted.append(stub("Secret", target.name + REDIS_CONNECTION_SUFFIX, target.namespace))
    present, absent = build_children(target, settings)
    deployment: Manifest | None = None
    # Secrets first: the pods reference them.
    wanted = [*connection_secrets, *present]
    adopt_all(wanted, owner)
    for manifest in wanted:
        applied = await cluster.apply(manifest)
        if manifest["kind"] == "Deployment":
            deployment = applied
    for manifest in [*unwanted, *absent]:
        await cluster.remove(manifest, owner_uid=str(owner["metadata"]["uid"]))
    return deployment


def adopt_all(manifests: Sequence[Manifest], owner: Mapping[str, Any]) -> None:
    """Owner references to the ApiService (Kubernetes deletes the children with it)."""
    kopf.adopt(list(manifests), owner=owner)  # type: ignore[arg-type]


async def _observe(
    deployment: Manifest | None, target: Target, settings: PlatformSettings, cluster: Cluster
) -> tuple[bool, str]:
    """Whether the service is ready; a rollout that cannot finish raises _DegradedError."""
    ready, message = _rollout(deployment, desired_replicas(target, settings))
    if not ready and deployment is not None:
        # Not ready yet: a slow rollout, or pods that will never start. Only the pods tell.
        selector = deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}
        stuck = stuck_pods(await cluster.pods(target.namespace, selector))
        if stuck:
            raise _DegradedError(*stuck)
    return ready, message


async def reconcile(
    *,
    body: Mapping[str, Any],
    settings: PlatformSettings,
    cluster: Cluster,
    now: str | None = None,
) -> dict[str, Any]:
    """Make the ApiService's children match its spec; returns its new status."""
    metadata = body["metadata"]
    generation = int(metadata.get("generation", 1))
    previous = (body.get("status") or {}).get("conditions") or []
    status: dict[str, Any] = {"observedGeneration": generation}
    try:
        spec: ApiServiceSpec = parse_spec(dict(body.get("spec") or {}))
        target = Target(name=metadata["name"], namespace=metadata["namespace"], spec=spec)
        _check_name(target, settings)
    except InvalidSpecError as exc:
        conditions = failed("InvalidSpec", str(exc), waiting="waiting for a corrected spec")
        status["conditions"] = render_conditions(
            conditions, generation=generation, previous=previous, now=now
        )
        return status
    status["url"] = service_url(target, settings)
    try:
        deployment = await _converge(target, settings, cluster, owner=body)
        ready, message = await _observe(deployment, target, settings, cluster)
    except _DegradedError as exc:
        conditions = failed(exc.reason, exc.message, waiting="retrying on the next resync")
    except ChildConflictError as exc:
        conditions = failed("ChildConflict", exc.message, waiting="waiting for the name to be free")
    except HttpError as exc:
        logger.warning("writing the children of %s failed: %s", target.name, exc)
        conditions = failed("ApiError", str(exc), waiting="retrying on the next resync")
    else:
        conditions = converged(ready=ready, message=message)
    status["conditions"] = render_conditions(
        conditions, generation=generation, previous=previous, now=now
    )
    return status


def transitions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The conditions whose status or reason changed (each one becomes an event)."""
    before = {item.get("type"): item for item in previous}
    changed = []
    for condition in current:
        old = before.get(condition["type"]) or {}
        if (old.get("status"), old.get("reason")) != (condition["status"], condition["reason"]):
            changed.append(condition)
    return changed


def status_changes(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of the new status that differ from the current one (what to patch)."""
    return {key: value for key, value in new.items() if current.get(key) != value}


async def finalize(
    *, body: Mapping[str, Any], settings: PlatformSettings, cluster: Cluster
) -> None:
    """Delete the ApiService's children now, and its database only if the spec says so."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    spec = dict(body.get("spec") or {})
    kinds = [
        "Ingress",
        "HTTPRoute",
        "ServiceMonitor",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Service",
        "Deployment",
    ]
    uid = str(metadata.get("uid", ""))
    for kind in kinds:
        await cluster.remove(stub(kind, name, namespace), owner_uid=uid)
    for suffix in (DATABASE_CONNECTION_SUFFIX, REDIS_CONNECTION_SUFFIX):
        await cluster.remove(stub("Secret", name + suffix, namespace), owner_uid=uid)
    if spec.get("redis") and settings.redis_users and settings.redis_url:
        try:
            await redis_users.drop(settings.redis_url, user=redis_users.user_name(namespace, name))
        except (OSError, TimeoutError, RedisError) as exc:
            # Its password went with the Secret; the deletion must not hang on Redis.
            logger.warning("deleting the Redis user of %s/%s failed: %s", namespace, name, exc)
    if spec.get("database") and spec.get("databaseDeletionPolicy") == "Delete":
        if not settings.database_admin_url:
            raise kopf.TemporaryError("no database admin connection to drop the database", delay=60)
        await database.drop(
            settings.database_admin_url, database=database.database_name(namespace, name)
        )
