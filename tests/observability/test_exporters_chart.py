"""The chart's Postgres and Redis exporters and its PodMonitors for them and for CloudNativePG."""

from __future__ import annotations

from typing import Any

from tests.chart.manifests import env_of, pod_labels, pod_spec, render, render_set, tier

FORCED: dict[str, Any] = {"metrics": {"serviceMonitor": {"force": True}}}


def exporters(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        obj["metadata"]["name"]: obj
        for obj in render(values).kind("Deployment")
        if tier(obj) == "exporter"
    }


def test_the_exporters_reach_the_stores_as_their_clients_and_are_scraped() -> None:
    rendered = render(FORCED)
    found = {
        obj["metadata"]["name"]: obj
        for obj in rendered.kind("Deployment")
        if tier(obj) == "exporter"
    }
    postgres = found["regatta-postgres-exporter"]
    redis = found["regatta-redis-exporter"]
    assert pod_labels(postgres)["regatta.dev/database-client"] == "true"
    assert pod_labels(redis)["regatta.dev/redis-client"] == "true"
    (container,) = pod_spec(postgres)["containers"]
    env = env_of(container)
    assert "secretKeyRef" in env["DATA_SOURCE_PASS"]["valueFrom"]  # never a password in values
    assert env["DATA_SOURCE_URI"]["value"] == "regatta-postgresql:5432/regatta?sslmode=disable"
    (container,) = pod_spec(redis)["containers"]
    assert env_of(container)["REDIS_ADDR"]["value"] == "redis://regatta-redis:6379"
    monitors = {m["metadata"]["name"]: m for m in rendered.kind("PodMonitor")}
    exporters_monitor = monitors["regatta-exporters"]["spec"]
    assert exporters_monitor["selector"]["matchLabels"]["regatta.dev/tier"] == "exporter"
    assert exporters_monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    assert "regatta-pg" not in monitors  # no CloudNativePG cluster here
    # Only Prometheus reaches them.
    policies = {p["metadata"]["name"] for p in rendered.kind("NetworkPolicy")}
    assert {"regatta-postgres-exporter", "regatta-redis-exporter"} <= policies


def test_cloudnativepg_is_scraped_by_its_own_pod_monitor_not_an_exporter() -> None:
    rendered = render_set("production")
    monitors = {m["metadata"]["name"]: m for m in rendered.kind("PodMonitor")}
    spec = monitors["regatta-pg"]["spec"]
    assert spec["selector"]["matchLabels"] == {"cnpg.io/cluster": "regatta-pg"}
    assert spec["podMetricsEndpoints"][0]["port"] == "metrics"
    names = {obj["metadata"]["name"] for obj in rendered.kind("Deployment")}
    assert "regatta-postgres-exporter" not in names


def test_exporters_can_be_turned_off() -> None:
    off = {"metrics": {"exporters": {"postgres": {"enabled": False}, "redis": {"enabled": False}}}}
    assert exporters(off) == {}
