"""The few Kubernetes calls the operator makes, on lightkube's async client.

Create, and on 409 (it exists already) patch it to the desired state; delete, and on 404 (it is
gone already) carry on. Merge patches replace lists whole, so a container's env or ports end up
exactly as built.
"""

from __future__ import annotations

import base64
from http import HTTPStatus
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

Manifest = dict[str, Any]

# Custom resources the operator writes besides the built-in kinds lightkube knows.
create_namespaced_resource("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")
create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")


def _resource(manifest: Manifest) -> Any:
    # Every kind the operator writes is namespaced; lightkube's registry types it as either.
    return resource_registry.load(manifest["apiVersion"], manifest["kind"])


# lightkube raises its ApiError (a subclass) for a JSON Status body, the plain error otherwise.
HttpError = httpx2.HTTPStatusError


def _status(exc: HttpError) -> int:
    return exc.response.status_code


class Cluster:
    """Desired-state writes to one Kubernetes API."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def apply(self, manifest: Manifest) -> Manifest:
        """Make the object exist as given: create it, or patch the one already there."""
        resource = _resource(manifest)
        metadata = manifest["metadata"]
        try:
            created = await self._client.create(resource.from_dict(manifest))
        except HttpError as exc:
            if _status(exc) != HTTPStatus.CONFLICT:
                raise
        else:
            return dict(created.to_dict())
        patched = await self._client.patch(
            resource,
            metadata["name"],
            manifest,
            namespace=metadata["namespace"],
            patch_type=PatchType.MERGE,
        )
        return dict(patched.to_dict())

    async def remove(self, manifest: Manifest) -> bool:
        """Delete the object named by the manifest; False when it was not there."""
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
