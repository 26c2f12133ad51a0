"""What pods do once they run: how they scale, when they roll, where their traces go."""

from __future__ import annotations

import hashlib
import re
from base64 import b64decode
from typing import Any

import pytest
import yaml

from tests.chart.manifests import (
    CHART_DIR,
    NAMESPACE,
    Manifest,
    env_of,
    pod_spec,
    render,
    render_set,
    value_sets,
)

SETS = list(value_sets())


def _template(obj: Manifest) -> dict[str, Any]:
    template: dict[str, Any] = obj["spec"]["template"]
    return template


def _service_deployments(value_set: str) -> list[Manifest]:
    """The APIs and the worker: the pods that run a service process."""
    return [
        d
        for d in render_set(value_set).kind("Deployment")
        if _template(d)["metadata"]["labels"]["regatta.dev/tier"] in {"api", "worker"}
    ]


def test_hpas_scale_on_cpu_and_on_memory_only_when_asked() -> None:
    for hpa in render_set("default").kind("HorizontalPodAutoscaler"):
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["averageUtilization"] == 70
    rendered = render(
        {"services": {"heroes": {"autoscaling": {"targetMemoryUtilizationPercentage": 85}}}}
    )
    heroes = rendered.get("HorizontalPodAutoscaler", "regatta-heroes")
    assert [m["resource"]["name"] for m in heroes["spec"]["metrics"]] == ["cpu", "memory"]
    items = rendered.get("HorizontalPodAutoscaler", "regatta-items")
    assert [m["resource"]["name"] for m in items["spec"]["metrics"]] == ["cpu"]


def _recorded_rules() -> set[str]:
    rules = yaml.safe_load(
        (CHART_DIR / "files" / "rules" / "regatta-platform.yaml").read_text(encoding="utf-8")
    )
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def test_an_api_scales_on_its_request_rate_and_cpu_through_keda() -> None:
    rendered = render_set("production")
    scaled = {s["metadata"]["name"]: s for s in rendered.kind("ScaledObject")}
    hpas = {h["metadata"]["name"] for h in rendered.kind("HorizontalPodAutoscaler")}
    # items: KEDA with CPU and the request rate; the worker: KEDA on stream lag; heroes: an HPA.
    assert set(scaled) == {"regatta-items", "regatta-notifications-worker"}
    assert "regatta-items" not in hpas
    assert "regatta-heroes" in hpas
    items = scaled["regatta-items"]["spec"]
    assert (items["minReplicaCount"], items["maxReplicaCount"]) == (3, 30)
    cpu, rate = items["triggers"]
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    assert rate["type"] == "prometheus"
    assert rate["metricType"] == "AverageValue"
    assert rate["metadata"]["threshold"] == "200"
    (series,) = re.findall(r"sum\((\S+)\{", rate["metadata"]["query"])
    assert series in _recorded_rules()
    assert f'namespace="{NAMESPACE}"' in rate["metadata"]["query"]
    assert 'service_name="items"' in rate["metadata"]["query"]
    behavior = items["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    deployment = rendered.get("Deployment", "regatta-items")
    assert "replicas" not in deployment["spec"], "KEDA owns the count"


def _secret_checksum(value_set: str) -> str:
    """What checksum/secrets must be: the generated Secrets' data as rendered."""
    parts = []
    for _component, name, key in _generated(value_set):
        secret = render_set(value_set).get("Secret", name)
        parts.append(f"{name}/{key}={secret['data'][key]}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _generated(value_set: str) -> list[tuple[str, str, str]]:
    rendered = render_set(value_set)
    order = ["api-keys", "postgresql", "redis", "notifications"]
    found = []
    for secret in rendered.kind("Secret"):
        component = secret["metadata"]["labels"]["app.kubernetes.io/component"]
        (key,) = secret["data"]
        found.append((component, secret["metadata"]["name"], key))
    return sorted(found, key=lambda item: order.index(item[0]))


@pytest.mark.parametrize("value_set", SETS)
def test_pods_roll_when_the_config_or_a_generated_secret_changes(value_set: str) -> None:
    for deployment in _service_deployments(value_set):
        annotations = _template(deployment)["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        if _generated(value_set):
            assert annotations["checksum/secrets"] == _secret_checksum(value_set)
        else:
            assert "checksum/secrets" not in annotations


def test_a_changed_setting_changes_the_config_checksum_and_nothing_else_does() -> None:
    def checksums(values: dict[str, Any]) -> tuple[str, str]:
        items = render(values).get("Deployment", "regatta-items")
        annotations = _template(items)["metadata"]["annotations"]
        return annotations["checksum/config"], annotations["checksum/secrets"]

    config, secrets = checksums({})
    assert checksums({})[0] == config
    # Generated values are drawn afresh offline (no cluster to look them up in).
    assert checksums({})[1] != secrets
    assert checksums({"config": {"logLevel": "DEBUG"}})[0] != config
    assert checksums({"apiKeys": {"secretKey": "keys"}})[0] != config
    assert checksums({"tracing": {"otlpEndpoint": "http://collector:4318"}})[0] != config
    assert checksums({"defaults": {"replicas": 3}})[0] == config
    assert checksums({"database": {"builtin": {"persistence": {"size": "20Gi"}}}})[0] == config


def test_redis_restarts_when_its_generated_password_changes() -> None:
    rendered = render_set("default")
    redis = rendered.get("StatefulSet", "regatta-redis")
    password = rendered.get("Secret", "regatta-redis")["data"]["password"]
    expected = hashlib.sha256(f"regatta-redis/password={password}".encode()).hexdigest()
    assert _template(redis)["metadata"]["annotations"]["checksum/secrets"] == expected
    assert b64decode(password)


def test_traces_are_off_without_an_endpoint() -> None:
    for obj in render_set("default").workloads():
        for container in pod_spec(obj)["containers"]:
            assert not [name for name in env_of(container) if name.startswith("OTEL_")]


def test_every_service_process_sends_traces_named_and_placed() -> None:
    deployments = _service_deployments("production")
    assert {d["metadata"]["name"] for d in deployments} == {
        "regatta-items",
        "regatta-heroes",
        "regatta-notifications",
        "regatta-notifications-worker",
    }
    for deployment in deployments:
        (container,) = pod_spec(deployment)["containers"]
        env = env_of(container)
        names = list(env)
        assert (
            env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.monitoring:4318"
        )
        component = deployment["metadata"]["name"].removeprefix("regatta-")
        assert env["OTEL_SERVICE_NAME"]["value"] == component
        assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.1"
        attributes = dict(
            pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
        )
        assert attributes["deployment.environment"] == "production"
        for attribute, field in (
            ("k8s.pod.name", "metadata.name"),
            ("k8s.namespace.name", "metadata.namespace"),
        ):
            (variable,) = re.fullmatch(r"\$\((\w+)\)", attributes[attribute]).groups()  # type: ignore[union-attr]
            assert env[variable]["valueFrom"]["fieldRef"]["fieldPath"] == field
            # Kubernetes expands $(VAR) only from variables defined earlier in the list.
            assert names.index(variable) < names.index("OTEL_RESOURCE_ATTRIBUTES")
