"""Render charts/regatta offline (Helm's engine through helm-python-sdk) and look inside."""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from helm_python.chart import Chart

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "regatta"
CI_DIR = CHART_DIR / "ci"
RELEASE = "regatta"
NAMESPACE = "regatta"
KUBERNETES_VERSION = "1.33"
APIS = ("items", "heroes", "notifications")

Manifest = dict[str, Any]

# Value sets the chart must render: the defaults, every ci/ set, and what skaffold installs.
_SKAFFOLD_SETS = {
    "skaffold-dev": ["common.yaml", "dev.yaml"],
    "skaffold-dev-core": ["common.yaml", "dev.yaml", "core.yaml"],
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of two value files: maps key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: Path) -> dict[str, Any]:
    """One YAML document as a mapping (an empty file is an empty mapping)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def value_sets() -> dict[str, dict[str, Any]]:
    """Every value set under test, by name."""
    sets: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted(CI_DIR.glob("*.yaml")):
        sets[path.stem] = load_yaml(path)
    for name, files in _SKAFFOLD_SETS.items():
        values: dict[str, Any] = {}
        for file in files:
            values = merge(values, load_yaml(REPO / "k8s" / "skaffold" / file))
        sets[name] = values
    return sets


@dataclass(frozen=True)
class Rendered:
    """The objects one install would create, and its NOTES.txt."""

    objects: list[Manifest]
    notes: str

    def kind(self, kind: str) -> list[Manifest]:
        """Every object of one kind."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        """The object of this kind and name (fails when absent)."""
        for obj in self.kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        msg = f"no {kind} named {name}"
        raise AssertionError(msg)

    def workloads(self) -> list[Manifest]:
        """Every object that runs pods."""
        kinds = {"Deployment", "StatefulSet", "Job", "Pod"}
        return [obj for obj in self.objects if obj["kind"] in kinds]


def render(values: dict[str, Any] | None = None, *, chart_dir: Path = CHART_DIR) -> Rendered:
    """Render like `helm install --dry-run`: every template, hooks and tests included."""
    chart = Chart.load(chart_dir)
    try:
        templates = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    objects: list[Manifest] = []
    notes = ""
    for path, text in sorted(templates.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                assert isinstance(document, dict), f"{path}: not an object"
                objects.append(document)
    return Rendered(objects=objects, notes=notes)


@functools.cache
def render_set(name: str) -> Rendered:
    """One named value set, rendered once per session."""
    return render(value_sets()[name])


def pod_spec(obj: Manifest) -> dict[str, Any]:
    """The pod spec of a Deployment, StatefulSet, Job or Pod."""
    if obj["kind"] == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    template: dict[str, Any] = obj["spec"]["template"]["spec"]
    return template


def pod_labels(obj: Manifest) -> dict[str, str]:
    """The labels its pods carry."""
    if obj["kind"] == "Pod":
        labels: dict[str, str] = obj["metadata"]["labels"]
        return labels
    template_labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
    return template_labels


def tier(obj: Manifest) -> str:
    """The regatta.dev/tier of a workload's pods: api, worker, operator, migrations, test..."""
    return pod_labels(obj).get("regatta.dev/tier", "")


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's environment by variable name."""
    return {item["name"]: item for item in container.get("env", [])}


def schema_dir() -> Path | None:
    """../shared/schemas (or $REGATTA_SCHEMA_DIR): third-party schemas never copied here."""
    override = os.environ.get("REGATTA_SCHEMA_DIR")
    path = Path(override) if override else REPO.parent / "shared" / "schemas"
    return path if path.is_dir() else None


def copy_chart(destination: Path) -> Path:
    """A scratch copy of the chart, for tests that break it on purpose."""
    target = destination / "regatta"
    shutil.copytree(CHART_DIR, target)
    return target
