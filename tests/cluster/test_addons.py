"""k8s/addons: values for kind and for any cluster, autoscaling metrics, traces in Grafana."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.manifests import REPO, env_of, load_yaml, merge, pod_spec, render, tier

ADDONS = REPO / "k8s" / "addons"
PROVISIONED = REPO / "observability" / "grafana" / "provisioning" / "datasources" / "regatta.yaml"
# Where Regatta's pods send their spans (OTLP/HTTP): the collector of opentelemetry-collector.yaml.
OTEL_ENDPOINT = "http://otel-collector.monitoring.svc.cluster.local:4318"


def _values(*names: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in names:
        values = merge(values, load_yaml(ADDONS / name))
    return values


@pytest.mark.parametrize("path", sorted(ADDONS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_values_file_is_one_yaml_mapping(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert len(documents) == 1
    assert isinstance(documents[0], dict)


def test_traefik_on_any_cluster_is_a_load_balancer_pinned_to_no_node() -> None:
    cloud = _values("traefik.yaml", "traefik-cloud.yaml")
    assert cloud["service"]["type"] == "LoadBalancer"
    for pinning in ("nodeSelector", "tolerations", "affinity"):
        assert pinning not in cloud
    assert "nodePort" not in yaml.safe_dump(cloud)
    assert cloud["deployment"]["replicas"] >= 2
    assert cloud["podDisruptionBudget"]["enabled"] is True
    kind = _values("traefik.yaml", "traefik-kind.yaml")
    assert kind["service"]["type"] == "NodePort"
    assert kind["nodeSelector"] == {"ingress-ready": "true"}
    # Both serve the class the chart's Ingress asks for.
    chart = load_yaml(REPO / "charts" / "regatta" / "values.yaml")
    assert kind["ingressClass"]["name"] == cloud["ingressClass"]["name"]
    assert cloud["ingressClass"]["name"] == chart["ingress"]["className"]


def test_metrics_server_skips_kubelet_tls_verification_on_kind_only() -> None:
    kind = _values("metrics-server.yaml", "metrics-server-kind.yaml")
    cloud = _values("metrics-server.yaml", "metrics-server-cloud.yaml")
    assert "--kubelet-insecure-tls" in kind["args"]
    assert "--kubelet-insecure-tls" not in cloud["args"]


def _collector() -> dict[str, Any]:
    return load_yaml(ADDONS / "opentelemetry-collector.yaml")


def test_the_collector_tags_pods_keeps_errors_and_slow_traces_and_feeds_tempo() -> None:
    collector = _collector()
    assert collector["mode"] == "deployment"
    assert collector["replicaCount"] == 1  # tail sampling needs every span of a trace here
    assert collector["image"]["repository"].endswith("-contrib")
    assert collector["presets"]["kubernetesAttributes"]["enabled"] is True
    config = collector["config"]
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    processors = traces["processors"]
    assert processors.index("k8s_attributes") < processors.index("tail_sampling")
    assert processors[-1] == "batch"
    policies = {p["type"]: p for p in config["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    # Slow means slower than the latency objective the SLO alerts count against.
    slo = (REPO / "observability" / "prometheus" / "rules" / "regatta-slo.yaml").read_text()
    threshold = policies["latency"]["latency"]["threshold_ms"]
    assert f'le="{threshold / 1000:g}"' in slo
    (exporter,) = traces["exporters"]
    tempo = load_yaml(ADDONS / "tempo.yaml")
    endpoint = config["exporters"][exporter]["endpoint"]
    assert endpoint == f"{tempo['fullnameOverride']}.monitoring.svc.cluster.local:4317"


def test_the_collector_endpoint_is_its_service() -> None:
    collector = _collector()
    service = f"{collector['fullnameOverride']}.monitoring.svc.cluster.local"
    assert f"http://{service}:4318" == OTEL_ENDPOINT
    assert collector.get("ports", {}).get("otlp-http", {}).get("enabled", True) is True


def test_make_kind_sends_every_workloads_spans_to_the_collector() -> None:
    rendered = render(load_yaml(REPO / "k8s" / "kind-values.yaml"))
    workloads = [obj for obj in rendered.workloads() if tier(obj) in {"api", "worker"}]
    assert workloads
    endpoints = [
        env_of(container).get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value")
        for obj in workloads
        for container in pod_spec(obj)["containers"]
    ]
    assert set(endpoints) == {OTEL_ENDPOINT}


def _provisioned() -> dict[str, dict[str, Any]]:
    data = load_yaml(PROVISIONED)
    return {source["uid"]: source for source in data["datasources"]}


def test_grafana_in_the_cluster_links_logs_traces_and_metrics_as_make_up_does() -> None:
    stack = load_yaml(ADDONS / "kube-prometheus-stack.yaml")
    provisioned = _provisioned()
    added = {source["uid"]: source for source in stack["grafana"]["additionalDataSources"]}
    assert set(added) == {"loki", "tempo"}
    for uid, source in added.items():
        assert source["type"] == provisioned[uid]["type"]
        assert source["jsonData"] == provisioned[uid]["jsonData"], uid
        assert source["url"].startswith("http://")
        assert ".monitoring.svc.cluster.local" in source["url"]
    tempo = load_yaml(ADDONS / "tempo.yaml")
    assert (
        added["tempo"]["url"]
        == f"http://{tempo['fullnameOverride']}.monitoring.svc.cluster.local:3200"
    )
    # The Prometheus datasource the stack provisions itself (uid prometheus) gets the exemplar link.
    sidecar = stack["grafana"]["sidecar"]["datasources"]
    assert sidecar.get("uid", "prometheus") == provisioned["prometheus"]["uid"]
    (destination,) = provisioned["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert sidecar["exemplarTraceIdDestinations"] == {
        "datasourceUid": destination["datasourceUid"],
        "traceIdLabelName": destination["name"],
    }


def test_prometheus_stores_exemplars() -> None:
    spec = load_yaml(ADDONS / "kube-prometheus-stack.yaml")["prometheus"]["prometheusSpec"]
    assert "exemplar-storage" in spec["enableFeatures"]
    assert spec["exemplars"]["maxSize"] > 0
