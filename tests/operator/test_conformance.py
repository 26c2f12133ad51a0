"""An ApiService equivalent to the items service gets the Deployment the chart gives items.

The chart renders the operator's settings from its values; the operator builds from them. For
every value set, an ApiService named like the chart's items component, with its image, port,
database, Redis, resources and autoscaling, must come out with the same probes, security
contexts, labels, resources and rollout behaviour as the chart's own items Deployment.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from regatta.operator.builders import Target, build_deployment, build_hpa, build_pdb, build_service
from regatta.operator.settings import CONFIG_VARIABLE, load_settings
from regatta.operator.spec import parse_spec
from tests.chart.manifests import Rendered, env_of, pod_spec, render, value_sets

SETS = ["default", "production", "minimal", "gateway-api", "openshift", "memory"]


def _values(name: str) -> dict[str, Any]:
    if name == "openshift":
        values: dict[str, Any] = {"openshift": True}
    elif name == "memory":
        # HPAs scale on memory only when a target is set; the operator's must follow.
        values = {"defaults": {"autoscaling": {"targetMemoryUtilizationPercentage": 85}}}
    else:
        values = copy.deepcopy(value_sets()[name])
    values.setdefault("operator", {})["enabled"] = True
    # An ApiService scales on CPU through an HPA; the chart's request-rate scaling (KEDA) has no
    # counterpart in the operator, so the comparison is with the chart's HPA.
    items = values.get("services", {}).get("items", {})
    items.get("autoscaling", {}).pop("requestRate", None)
    return values


def _equivalent(rendered: Rendered, namespace: str) -> tuple[Any, Any]:
    """The chart's items Deployment, and the operator's for the equivalent ApiService."""
    items = rendered.get("Deployment", "regatta-items")
    operator = rendered.get("Deployment", "regatta-operator")
    environ = {
        name: item["value"]
        for name, item in env_of(pod_spec(operator)["containers"][0]).items()
        if name == CONFIG_VARIABLE
    }
    settings = load_settings(environ)
    (container,) = pod_spec(items)["containers"]
    hpa = [
        h
        for h in rendered.kind("HorizontalPodAutoscaler")
        if h["metadata"]["name"] == "regatta-items"
    ]
    spec: dict[str, Any] = {
        "image": container["image"],
        "version": items["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"],
        "pathPrefix": "/items",
        "port": container["ports"][0]["containerPort"],
        "database": True,
        "redis": True,
        "resources": container["resources"],
    }
    if hpa:
        (autoscaler,) = hpa
        spec["autoscaling"] = {
            "minReplicas": autoscaler["spec"]["minReplicas"],
            "maxReplicas": autoscaler["spec"]["maxReplicas"],
            "targetCPUUtilizationPercentage": autoscaler["spec"]["metrics"][0]["resource"][
                "target"
            ]["averageUtilization"],
        }
    else:
        spec["replicas"] = items["spec"]["replicas"]
    target = Target(name="items", namespace=namespace, spec=parse_spec(spec))
    return items, (target, settings)


@pytest.mark.parametrize("value_set", SETS)
def test_the_operator_builds_the_chart_items_deployment(value_set: str) -> None:
    rendered = render(_values(value_set))
    chart, (target, settings) = _equivalent(rendered, "regatta")
    built = build_deployment(target, settings)

    assert built["spec"]["selector"] == chart["spec"]["selector"]
    assert built["spec"].get("replicas") == chart["spec"].get("replicas")
    assert built["spec"]["strategy"] == chart["spec"]["strategy"]
    assert built["spec"]["revisionHistoryLimit"] == chart["spec"]["revisionHistoryLimit"]
    assert (
        built["spec"]["template"]["metadata"]["labels"]
        == (chart["spec"]["template"]["metadata"]["labels"])
    )
    ours, theirs = pod_spec(built), pod_spec(chart)
    for key in (
        "securityContext",
        "terminationGracePeriodSeconds",
        "topologySpreadConstraints",
        "priorityClassName",
        "nodeSelector",
        "tolerations",
        "affinity",
        "automountServiceAccountToken",
    ):
        assert ours.get(key) == theirs.get(key), key
    assert [s["name"] for s in ours.get("imagePullSecrets", [])] == [
        s["name"] for s in theirs.get("imagePullSecrets", [])
    ]
    (mine,) = ours["containers"]
    (reference,) = theirs["containers"]
    for key in (
        "name",
        "image",
        "imagePullPolicy",
        "ports",
        "startupProbe",
        "readinessProbe",
        "livenessProbe",
        "lifecycle",
        "resources",
        "securityContext",
    ):
        assert mine[key] == reference[key], key
    tmp = next(v for v in theirs["volumes"] if v["name"] == "tmp")
    assert tmp in ours["volumes"]
    tmp_mount = next(m for m in reference["volumeMounts"] if m["name"] == "tmp")
    assert tmp_mount in mine["volumeMounts"]
    # The same settings reach the process (the values differ: its own database and prefix).
    common = ("ENVIRONMENT", "LOG_LEVEL", "HOST", "PORT", "KEEPALIVE_SECONDS")
    for name in common:
        assert env_of(mine)[name] == env_of(reference)[name], name
    assert set(env_of(mine)) >= {"DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX"}


@pytest.mark.parametrize("value_set", ["default", "production"])
def test_the_operator_builds_the_chart_items_service_hpa_and_pdb(value_set: str) -> None:
    rendered = render(_values(value_set))
    _, (target, settings) = _equivalent(rendered, "regatta")
    chart_service = rendered.get("Service", "regatta-items")
    assert build_service(target, settings)["spec"] == chart_service["spec"]
    hpa = build_hpa(target, settings)
    assert hpa is not None
    chart_hpa = rendered.get("HorizontalPodAutoscaler", "regatta-items")
    assert {**hpa["spec"], "scaleTargetRef": None} == {**chart_hpa["spec"], "scaleTargetRef": None}
    pdb = build_pdb(target, settings)
    assert pdb is not None
    assert pdb["spec"] == rendered.get("PodDisruptionBudget", "regatta-items")["spec"]


# Settings every service reads, which an ApiService must get exactly as the chart's items does.
SHARED_ENV = [
    "ENVIRONMENT",
    "LOG_LEVEL",
    "KEEPALIVE_SECONDS",
    "GRACEFUL_SHUTDOWN_SECONDS",
    "MAX_BODY_BYTES",
    "RATE_LIMIT_ENABLED",
    "RATE_LIMIT_WINDOW_SECONDS",
    "RATE_LIMIT_READS",
    "RATE_LIMIT_WRITES",
    "TRUSTED_PROXIES",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
]


@pytest.mark.parametrize("value_set", SETS)
def test_the_operator_passes_the_chart_service_settings(value_set: str) -> None:
    rendered = render(_values(value_set))
    chart, (target, settings) = _equivalent(rendered, "regatta")
    (chart_container,) = pod_spec(chart)["containers"]
    chart_env = env_of(chart_container)
    built_env = env_of(pod_spec(build_deployment(target, settings))["containers"][0])
    for name in SHARED_ENV:
        assert built_env[name].get("value") == chart_env[name].get("value"), name
