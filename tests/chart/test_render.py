"""The chart renders for every value set, lints clean and produces valid Kubernetes objects."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from helm_python.chart import lint
from helm_python.errors import HelmError

from tests.chart.manifests import (
    CHART_DIR,
    KUBERNETES_VERSION,
    Manifest,
    load_yaml,
    render,
    render_set,
    schema_dir,
    value_sets,
)

SETS = list(value_sets())

# Custom resources the chart may render, and the schema of each under ../shared/schemas/crds.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com/servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com/podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com/prometheusrule_v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io/httproute_v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh/scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh/triggerauthentication_v1alpha1.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io/cluster_v1.json",
}


def _validate_core(obj: Manifest) -> None:
    with warnings.catch_warnings():
        # kubernetes-validate still resolves $refs through jsonschema's deprecated RefResolver.
        warnings.simplefilter("ignore", DeprecationWarning)
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _crd_validator(path: Path) -> Any:
    schema = json.loads(path.read_text(encoding="utf-8"))
    # No metaschema check: some upstream patterns use Go-only regex syntax ((?i) mid-pattern).
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("value_set", SETS)
def test_lint_is_clean(value_set: str) -> None:
    report = lint(
        CHART_DIR, value_sets()[value_set], strict=True, kube_version=f"v{KUBERNETES_VERSION}.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"]


@pytest.mark.parametrize("value_set", SETS)
def test_every_core_object_is_valid_for_kubernetes(value_set: str) -> None:
    objects = render_set(value_set).objects
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        _validate_core(obj)


@pytest.mark.parametrize("value_set", SETS)
def test_every_custom_resource_matches_its_crd(value_set: str) -> None:
    schemas = schema_dir()
    if schemas is None:
        pytest.skip("../shared/schemas not found (set REGATTA_SCHEMA_DIR): CRD checks skipped")
    for obj in render_set(value_set).objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_SCHEMAS:
            _crd_validator(schemas / "crds" / CRD_SCHEMAS[key]).validate(obj)


def test_the_crds_the_chart_ships_are_valid() -> None:
    paths = sorted((CHART_DIR / "files" / "crds").glob("*.yaml"))
    assert paths
    for path in paths:
        _validate_core(load_yaml(path))
    # Nothing in crds/: Helm would install it with every release, operator or not.
    assert not list((CHART_DIR / "crds").glob("*"))


def test_every_custom_kind_the_chart_renders_has_a_schema() -> None:
    custom = {
        (obj["apiVersion"], obj["kind"])
        for value_set in SETS
        for obj in render_set(value_set).objects
        if "." in obj["apiVersion"].split("/")[0]
        and not obj["apiVersion"].startswith(
            (
                "apps/",
                "batch/",
                "policy/",
                "autoscaling/",
                "networking.k8s.io/",
                "rbac.",
                "apiextensions.k8s.io/",
            )
        )
    }
    assert custom <= set(CRD_SCHEMAS)
    # The production-like set exercises every one of them.
    assert set(CRD_SCHEMAS) - {("gateway.networking.k8s.io/v1", "HTTPRoute")} <= {
        (obj["apiVersion"], obj["kind"]) for obj in render_set("production").objects
    }


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 3},
        {"services": {"items": {"replica": 3}}},
        {"defaults": {"probes": {"startup": {"paht": "/livez"}}}},
        {"ingress": {"tls": {"secret": "x"}}},
        {"database": {"mode": "sqlite"}},
        {"config": {"environment": "staging"}},
        {"worker": {"keda": {"lag": 5}}},
    ],
    ids=["top", "service", "probe", "tls", "db-mode", "environment", "keda"],
)
def test_the_values_schema_rejects_stale_or_misspelt_keys(values: dict[str, Any]) -> None:
    with pytest.raises(HelmError, match="schema"):
        render(values)


def test_the_values_schema_allows_kubernetes_pass_through_settings() -> None:
    rendered = render(
        {
            "defaults": {
                "envFrom": [{"secretRef": {"name": "extra"}}],
                "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "podSecurityContext": {"supplementalGroups": [4000], "sysctls": []},
                "securityContext": {"procMount": "Default"},
                "affinity": {"nodeAffinity": {}},
            }
        }
    )
    container = rendered.get("Deployment", "regatta-items")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert container["env"][-1]["name"] == "X"
    assert container["securityContext"]["procMount"] == "Default"


def test_the_values_file_is_fully_described_by_the_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} is not in the schema"
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(load_yaml(CHART_DIR / "values.yaml"), schema, "")
