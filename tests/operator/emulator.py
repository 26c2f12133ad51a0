"""kmock with server-side apply, as far as the operator's tests need it.

kmock merges every PATCH into the stored object. The Kubernetes API treats an apply patch
(`application/apply-patch+yaml`) differently: the applied configuration is everything its field
manager wants, so fields the manager applied before and left out now are removed. With one
field manager writing a child (the operator), that is: the object becomes the applied
configuration, plus what the server itself keeps (`status`, uid, resource version, managed
fields). A Secret's `stringData` is folded into base64 `data`, as the API server does. An apply
to an object that does not exist creates it.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import rendering
from kmock._internal.k8s import KubernetesScaffold

APPLY_PATCH = "application/apply-patch+yaml"
_SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")
_versions = itertools.count(1000)


def merge_patch_between(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns `old` into `new` (None deletes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch_between(old[key], value)
    return patch


def _as_stored(applied: dict[str, Any]) -> dict[str, Any]:
    if applied.get("kind") != "Secret" or "stringData" not in applied:
        return applied
    stored = {key: value for key, value in applied.items() if key != "stringData"}
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in applied["stringData"].items()}
    stored["data"] = {**(applied.get("data") or {}), **encoded}
    return stored


class ApplyingEmulator(kmock.KubernetesEmulator):
    """kmock's emulator that understands server-side apply patches."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # The operator lists an ApiService's pods to tell a crash loop from a slow rollout.
        self.resources["v1/pods"] = kmock.ResourceInfo(
            kind="Pod", namespaced=True, verbs={"get", "list", "watch"}
        )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        if not (
            request.method == "PATCH"
            and content_type.startswith(APPLY_PATCH)
            and request.resource is not None
            and request.name is not None
        ):
            return await super()._handle(request)
        key = (request.resource, request.namespace, request.name)
        applied = _as_stored(dict(request.data or {}))
        async with self._lock:
            objects = self._objects
            if key not in objects or objects[key].deleted:
                metadata = {**applied["metadata"], "uid": f"uid-{next(_versions)}"}
                applied = {**applied, "metadata": metadata}
                if key in objects:
                    objects[key].create(applied)
                else:
                    objects[key] = applied
                event = "ADDED"
            else:
                old = objects[key].raw
                kept = {k: old["metadata"][k] for k in _SERVER_METADATA if k in old["metadata"]}
                new = {**applied, "metadata": {**applied["metadata"], **kept}}
                if "status" in old:
                    new["status"] = old["status"]
                objects[key].patch(merge_patch_between(old, new))
                event = "MODIFIED"
            raw = objects[key].raw
            await self._buses[request.resource].put({"type": event, "object": raw})
        # kmock's own handling would merge the patch once more: serve the stored object instead.
        return await KubernetesScaffold._handle(self, request)
