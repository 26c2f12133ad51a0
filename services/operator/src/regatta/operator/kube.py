"""The few Kubernetes calls the operator makes, on lightkube's async client.

Children are written with server-side apply under one field manager (`regatta-operator`), forced:
the operator is the authority over the fields it sets, so a field it stops setting is removed by
the API server, and a field someone else changed (`kubectl scale`, `kubectl edit`) is taken back.
Objects the operator does not control are never written: a child whose name is taken by an
object without this ApiService as its controller is a `ChildConflictError`, reported in the
status. An unchanged child costs one read and no write: each applied manifest carries a hash of
itself, and a child whose hash matches and whose fields still hold the built values is left alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

Manifest = dict[str, Any]

FIELD_MANAGER = "regatta-operator"
APPLIED_HASH = "regatta.dev/applied-hash"

# Custom resources the operator writes besides the built-in kinds lightkube knows.
create_namespaced_resource("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")
create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
ApiServiceResource = create_namespaced_resource(
    "regatta.dev", "v1alpha1", "ApiService", "apiservices"
)


def _resource(manifest: Manifest) -> Any:
    # Every kind the operator writes is namespaced; lightkube's registry types it as either.
    return resource_registry.load(manifest["apiVersion"], manifest["kind"])


# lightkube raises its ApiError (a subclass) for a JSON Status body, the plain error otherwise.
HttpError = httpx2.HTTPStatusError


class ChildConflictError(Exception):
    """A child's name is taken by an object this ApiService does not control."""

    def __init__(self, manifest: Manifest, holder: str) -> None:
        metadata = manifest["metadata"]
        self.message = (
            f"{manifest['kind']} {metadata['namespace']}/{metadata['name']} exists and is "
            f"controlled by {holder}; it is left alone"
        )
        super().__init__(self.message)


def _status(exc: HttpError) -> int:
    return exc.response.status_code


def applied_hash(manifest: Manifest) -> str:
    """A digest of what is applied (without the hash annotation itself)."""
    annotations = {
        key: value
        for key, value in (manifest["metadata"].get("annotations") or {}).items()
        if key != APPLIED_HASH
    }
    stripped = {**manifest, "metadata": {**manifest["metadata"], "annotations": annotations}}
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:32]


def with_hash(manifest: Manifest) -> Manifest:
    """The manifest with its own hash in an annotation."""
    metadata = manifest["metadata"]
    annotations = {**(metadata.get("annotations") or {}), APPLIED_HASH: applied_hash(manifest)}
    return {**manifest, "metadata": {**metadata, "annotations": annotations}}


def _contains(live: Any, wanted: Any) -> bool:
    """Whether every field of `wanted` holds the same value in `live` (defaults may be added)."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and _contains(live[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(_contains(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted)


def _as_stored(manifest: Manifest) -> Manifest:
    # The API server folds a Secret's `stringData` into base64 `data` and never returns it.
    if manifest.get("kind") != "Secret" or "stringData" not in manifest:
        return manifest
    stored = {key: value for key, value in manifest.items() if key != "stringData"}
    stored["data"] = {
        **(manifest.get("data") or {}),
        **{
            key: base64.b64encode(value.encode()).decode()
            for key, value in manifest["stringData"].items()
        },
    }
    return stored


def in_place(live: Manifest, wanted: Manifest) -> bool:
    """Whether the live object is what `wanted` (with its hash) would make it."""
    annotations = live.get("metadata", {}).get("annotations") or {}
    if annotations.get(APPLIED_HASH) != wanted["metadata"]["annotations"][APPLIED_HASH]:
        return False
    return _contains(live, _as_stored(wanted))


def controller_uid(manifest: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (its owner reference with `controller: true`)."""
    for reference in manifest.get("metadata", {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return str(reference.get("uid"))
    return None


def _holder(live: Manifest) -> str:
    for reference in live.get("metadata", {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return f"{reference.get('kind')} {reference.get('name')}"
    managers = sorted(
        {str(entry.get("manager")) for entry in live["metadata"].get("managedFields") or []}
    )
    return "nothing of the operator's" + (f" (managers: {', '.join(managers)})" if managers else "")


def _own_update(entry: Mapping[str, Any]) -> bool:
    return entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Update"


def _written_before_apply(live: Manifest) -> bool:
    """Whether the operator's earlier versions (create and merge patch) wrote this object."""
    return any(_own_update(entry) for entry in live["metadata"].get("managedFields") or [])


class Cluster:
    """Desired-state writes to one Kubernetes API."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def apply(self, manifest: Manifest) -> Manifest:
        """Make the object hold exactly the fields given (server-side apply), if it is ours.

        The manifest names its controller in its owner references; an object of the same name
        controlled by anything else raises ChildConflictError and is not written.
        """
        wanted = with_hash(manifest)
        live = await self.read(wanted)
        if live is not None:
            if controller_uid(live) != controller_uid(wanted):
                raise ChildConflictError(wanted, _holder(live))
            if in_place(live, wanted):
                return live
        resource = _resource(wanted)
        applied = dict(
            (
                await self._client.apply(
                    resource.from_dict(wanted), field_manager=FIELD_MANAGER, force=True
                )
            ).to_dict()
        )
        if live is not None and _written_before_apply(live):
            await self._forget_updates(wanted, applied)
        return applied

    async def _forget_updates(self, wanted: Manifest, applied: Manifest) -> None:
        """Drop the field ownership left by the operator's merge patches (before apply).

        Fields a merge patch set stay owned by that `Update` entry: a field the operator stops
        setting would never be removed. With the `Apply` entry in place, the old one goes.
        """
        entries = applied.get("metadata", {}).get("managedFields") or []
        kept = [entry for entry in entries if not _own_update(entry)]
        metadata = wanted["metadata"]
        await self._client.patch(
            _resource(wanted),
            metadata["name"],
            {"metadata": {"managedFields": kept or [{}]}},
            namespace=metadata["namespace"],
            patch_type=PatchType.MERGE,
        )

    async def remove(self, manifest: Manifest, *, owner_uid: str | None = None) -> bool:
        """Delete the object named by the manifest if it is there (and, given owner_uid, ours).

        False when there was nothing to delete; an object another controller holds is kept.
        """
        live = await self.read(manifest)
        if live is None:
            return False
        if owner_uid is not None and controller_uid(live) != owner_uid:
            return False
        resource = _resource(manifest)
        metadata = manifest["metadata"]
        try:
            await self._client.delete(resource, metadata["name"], namespace=metadata["namespace"])
        except HttpError as exc:
            if _status(exc) != HTTPStatus.NOT_FOUND:
                raise
            return False
        return True

    async def read(self, manifest: Manifest) -> Manifest | None:
        """The object named by the manifest as the server has it, or None."""
        resource = _resource(manifest)
        metadata = manifest["metadata"]
        try:
            found = await self._client.get(
                resource, metadata["name"], namespace=metadata["namespace"]
            )
        except HttpError as exc:
            if _status(exc) != HTTPStatus.NOT_FOUND:
                raise
            return None
        return dict(found.to_dict())

    async def pods(self, namespace: str, labels: Mapping[str, str]) -> list[Manifest]:
        """The pods in the namespace that carry these labels."""
        if not labels:
            return []
        return [
            dict(pod.to_dict())
            async for pod in self._client.list(Pod, namespace=namespace, labels=dict(labels))
        ]

    async def patch_status(self, name: str, namespace: str, status: Mapping[str, Any]) -> None:
        """Merge these keys into an ApiService's status."""
        await self._client.patch(
            ApiServiceResource.Status,
            name,
            {"status": dict(status)},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    async def close(self) -> None:
        """Close the connections."""
        await self._client.close()


def secret_values(secret: Manifest) -> dict[str, str]:
    """A Secret's values, decoded."""
    values = {
        key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()
    }
    # A server that has not folded `stringData` into `data` (a test double) returns it as written.
    values.update(secret.get("stringData") or {})
    return values
