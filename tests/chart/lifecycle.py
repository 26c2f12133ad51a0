"""Helm's install and upgrade order, walked offline over rendered manifests.

What Helm documents (helm.sh/docs/topics/charts_hooks and .../charts, "Install order"):
`helm install` creates the CRDs in crds/ (unless --skip-crds), runs the pre-install hooks one by
one (by weight, then name; see hook_order) waiting for each Job or Pod to finish,
creates every other object in its install order, then runs the post-install hooks. `helm
upgrade` never touches crds/: its pre-upgrade hooks run while only the previous release's objects
exist, then the new objects replace the old (kept ones excepted), then the post-upgrade hooks.
A hook is deleted after it succeeds when its delete policy says hook-succeeded.

The walk tracks which objects exist and, for every Job or Pod a phase starts, which of the
Secrets, ConfigMaps, ServiceAccounts and PersistentVolumeClaims its pods reference are missing.
A hook that waits on something created later waits until Helm times out; an ordinary object's
pods are only checked once their whole phase is applied (the kubelet retries in between).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.chart.manifests import CHART_DIR, Manifest, pod_spec, render

# Helm's releaseutil.InstallOrder; unknown kinds come after these, by kind name.
INSTALL_ORDER = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
]
RUNS_PODS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod", "ReplicaSet"}

Key = tuple[str, str]  # (kind, name)


def _kind_rank(kind: str) -> tuple[int, str]:
    if kind in INSTALL_ORDER:
        return (INSTALL_ORDER.index(kind), "")
    return (len(INSTALL_ORDER), kind)


def key(obj: Manifest) -> Key:
    return (obj["kind"], obj["metadata"]["name"])


def annotations_of(obj: Manifest) -> dict[str, str]:
    found: dict[str, str] = obj["metadata"].get("annotations") or {}
    return found


def hook_events(obj: Manifest) -> set[str]:
    return {e.strip() for e in annotations_of(obj).get("helm.sh/hook", "").split(",") if e.strip()}


def hook_order(obj: Manifest) -> tuple[int, str, tuple[int, str]]:
    """Helm runs the hooks of one event by weight, then name.

    The hooks page says "then kind, then name", but Helm sorts by kind first and then, stably,
    by weight and name (helm/helm#12414, helm/helm-www#1520): kind decides only between hooks
    of the same weight and name. The chart never relies on it: weights order what must come
    first.
    """
    weight = int(annotations_of(obj).get("helm.sh/hook-weight", "0"))
    return (weight, obj["metadata"]["name"], _kind_rank(obj["kind"]))


def install_order(obj: Manifest) -> tuple[tuple[int, str], str]:
    return (_kind_rank(obj["kind"]), obj["metadata"]["name"])


def _container_refs(container: dict[str, Any]) -> set[Key]:
    found: set[Key] = set()
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        for ref, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if ref in source and not source[ref].get("optional"):
                found.add((kind, source[ref]["name"]))
    for item in container.get("envFrom", []):
        for ref, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            if ref in item and not item[ref].get("optional"):
                found.add((kind, item[ref]["name"]))
    return found


def _volume_refs(volume: dict[str, Any], claims: set[str]) -> set[Key]:
    found: set[Key] = set()
    sources = [volume, *volume.get("projected", {}).get("sources", [])]
    for source in sources:
        secret = source.get("secret")
        if secret and not secret.get("optional"):
            found.add(("Secret", secret.get("secretName") or secret["name"]))
        config_map = source.get("configMap")
        if config_map and not config_map.get("optional"):
            found.add(("ConfigMap", config_map["name"]))
    claim = volume.get("persistentVolumeClaim", {}).get("claimName")
    if claim and claim not in claims:
        found.add(("PersistentVolumeClaim", claim))
    return found


def references(obj: Manifest) -> set[Key]:
    """The Secrets, ConfigMaps, ServiceAccount and PVCs a workload's pods need to start."""
    spec = pod_spec(obj)
    found: set[Key] = {("ServiceAccount", spec.get("serviceAccountName") or "default")}
    # A StatefulSet's claims come from its own volumeClaimTemplates.
    claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        found |= _container_refs(container)
    for volume in spec.get("volumes", []):
        found |= _volume_refs(volume, claims)
    return found


def _user_secrets(values: Any, path: str = "") -> Iterator[str]:
    """Secrets the values name as already there (`existingSecret`, KEDA's password Secret)."""
    if isinstance(values, dict):
        for name, value in values.items():
            here = f"{path}.{name}"
            if name == "existingSecret" and isinstance(value, str) and value:
                yield value
            elif here.endswith("keda.passwordSecret") and isinstance(value, dict):
                if value.get("name"):
                    yield value["name"]
            else:
                yield from _user_secrets(value, here)


def provided_by_user(values: dict[str, Any]) -> set[Key]:
    """What a user creates before installing with these values, and what every namespace has."""
    return {("ServiceAccount", "default")} | {("Secret", n) for n in _user_secrets(values)}


def made_by_operators(obj: Manifest) -> set[Key]:
    """Objects a controller creates for this one (CloudNativePG's `<cluster>-app` Secret)."""
    if obj["apiVersion"].startswith("postgresql.cnpg.io/") and obj["kind"] == "Cluster":
        return {("Secret", f"{obj['metadata']['name']}-app")}
    return set()


@functools.cache
def _rendered(values: str) -> list[Manifest]:
    """Each value set rendered once per session (the walks only read the objects)."""
    return render(json.loads(values)).objects


def crds() -> list[Manifest]:
    return [
        yaml.safe_load(p.read_text(encoding="utf-8"))
        for p in sorted((CHART_DIR / "crds").glob("*.yaml"))
    ]


@dataclass
class Release:
    """One rendered release: its hooks by event, its ordinary objects, and what it keeps."""

    values: dict[str, Any]
    objects: list[Manifest]

    @classmethod
    def of(cls, values: dict[str, Any]) -> Release:
        return cls(values=values, objects=_rendered(json.dumps(values, sort_keys=True)))

    def hooks(self, event: str) -> list[Manifest]:
        return sorted((o for o in self.objects if event in hook_events(o)), key=hook_order)

    def resources(self) -> list[Manifest]:
        return sorted((o for o in self.objects if not hook_events(o)), key=install_order)


@dataclass
class Walk:
    """The objects in the namespace, and every start that found something missing."""

    existing: set[Key] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def _create(self, obj: Manifest) -> None:
        self.existing.add(key(obj))
        self.existing |= made_by_operators(obj)

    def _check(self, obj: Manifest, phase: str) -> None:
        if obj["kind"] not in RUNS_PODS:
            return
        missing = sorted(references(obj) - self.existing)
        if missing:
            self.problems.append(
                f"{phase}: {obj['kind']} {obj['metadata']['name']} waits for "
                + ", ".join(f"{kind} {name}" for kind, name in missing)
            )

    def run_hooks(self, release: Release, event: str) -> None:
        for hook in release.hooks(event):
            self.steps.append(f"{event} {hook['kind']} {hook['metadata']['name']}")
            self._create(hook)
            self._check(hook, event)
            policies = annotations_of(hook).get("helm.sh/hook-delete-policy", "")
            if "hook-succeeded" in policies:
                self.existing.discard(key(hook))

    def apply(self, release: Release, previous: Release | None, phase: str) -> None:
        """Create (or update) the release's objects; drop the previous ones it no longer has."""
        new = release.resources()
        if previous is not None:
            wanted = {key(o) for o in new}
            for old in previous.resources():
                kept = annotations_of(old).get("helm.sh/resource-policy") == "keep"
                if key(old) not in wanted and not kept:
                    self.existing.discard(key(old))
        for obj in new:
            self.steps.append(f"{phase} {obj['kind']} {obj['metadata']['name']}")
            self._create(obj)
        for obj in new:
            self._check(obj, phase)


def install(values: dict[str, Any], *, skip_crds: bool = False) -> tuple[Walk, Release]:
    release = Release.of(values)
    walk = Walk(existing=provided_by_user(values))
    if not skip_crds:
        for crd in crds():
            walk.steps.append(f"crds {crd['metadata']['name']}")
            walk.existing.add(key(crd))
    walk.run_hooks(release, "pre-install")
    walk.apply(release, None, "install")
    walk.run_hooks(release, "post-install")
    walk.run_hooks(release, "test")
    return walk, release


def upgrade(before: dict[str, Any], after: dict[str, Any]) -> Walk:
    """Install `before`, then `helm upgrade` to `after`; the problems of the upgrade alone."""
    installed, previous = install(before)
    release = Release.of(after)
    walk = Walk(existing=installed.existing | provided_by_user(after))
    walk.run_hooks(release, "pre-upgrade")
    walk.apply(release, previous, "upgrade")
    walk.run_hooks(release, "post-upgrade")
    walk.run_hooks(release, "test")
    return walk


# Argo CD: the phase of a Helm hook (argo-cd docs, "Helm hooks"), when it has no hook of its own.
_ARGO_PHASES = ["PreSync", "Sync", "PostSync"]
_HELM_TO_ARGO = {
    "crd-install": "PreSync",
    "pre-install": "PreSync",
    "pre-upgrade": "PreSync",
    "post-install": "PostSync",
    "post-upgrade": "PostSync",
}


def argo_step(obj: Manifest) -> tuple[int, int] | None:
    """When Argo CD applies an object: (phase, wave); None when it skips it.

    Its own hook annotation wins over Helm's; a Helm hook of several events runs in the
    earliest phase they map to; unmapped Helm hooks (test) are not applied. The wave is
    argocd.argoproj.io/sync-wave, else a Helm hook's weight, else 0.
    """
    notes = annotations_of(obj)
    if "argocd.argoproj.io/hook" in notes:
        phases = [p.strip() for p in notes["argocd.argoproj.io/hook"].split(",")]
    elif hook_events(obj):
        phases = [_HELM_TO_ARGO[e] for e in hook_events(obj) if e in _HELM_TO_ARGO]
    else:
        phases = ["Sync"]
    known = [_ARGO_PHASES.index(p) for p in phases if p in _ARGO_PHASES]
    if not known:
        return None
    wave = notes.get("argocd.argoproj.io/sync-wave", notes.get("helm.sh/hook-weight", "0"))
    return (min(known), int(wave))


def argo_sync(values: dict[str, Any]) -> Walk:
    """An Argo CD sync of a fresh namespace: each (phase, wave) applied, then waited for."""
    release = Release.of(values)
    walk = Walk(existing=provided_by_user(values))
    steps = sorted({step for obj in release.objects if (step := argo_step(obj)) is not None})
    for step in steps:
        batch = sorted((o for o in release.objects if argo_step(o) == step), key=install_order)
        for obj in batch:
            walk.steps.append(f"{_ARGO_PHASES[step[0]]} wave {step[1]}: {key(obj)}")
            walk._create(obj)
        for obj in batch:
            walk._check(obj, f"{_ARGO_PHASES[step[0]]} wave {step[1]}")
    return walk
