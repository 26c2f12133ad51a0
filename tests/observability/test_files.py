"""The files in observability/: current, consistent with each other and with what is exported."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import dashboards
from regatta.common.telemetry.logs import JsonFormatter
from regatta.common.telemetry.metrics import PlatformMetrics
from regatta.notifications.metrics import WorkerMetrics
from tests.observability.conftest import OBSERVABILITY, ROOT

GRAFANA = OBSERVABILITY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.yaml"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "regatta.yaml"
# Metrics only a cluster has: cAdvisor's, kube-state-metrics', and the chart's Postgres and
# Redis exporters' (and CloudNativePG's).
CLUSTER_METRIC = re.compile(
    r"\b(container_[a-z_]+|kube_[a-z_]+|pg_[a-z_]+|cnpg_[a-z_]+|redis_[a-z_]+)\b"
)


def load(path: Any) -> Any:
    return (
        json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    )


def prometheus_exprs() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path.stem, target["expr"], panel)
        for path in DASHBOARDS
        for panel in load(path)["panels"]
        if panel.get("datasource", {}).get("type") == "prometheus"
        for target in panel["targets"]
    ]


def rule_exprs() -> list[str]:
    return [
        rule["expr"] for path in RULES for group in load(path)["groups"] for rule in group["rules"]
    ]


def test_the_dashboards_are_what_the_generator_builds() -> None:
    assert dashboards.main(["--check"]) == 0, "run: uv run python infra/dashboards.py"
    assert {path.name for path in DASHBOARDS} == {
        "regatta-overview.json",
        "regatta-items.json",
        "regatta-heroes.json",
        "regatta-notifications.json",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_a_dashboard_uses_its_datasource_variables_and_has_logs_and_traces(path: Any) -> None:
    document = load(path)
    variables = {v["name"]: v for v in document["templating"]["list"]}
    kinds = {"prometheus": "datasource", "loki": "loki", "tempo": "tempo"}
    panels = [p for p in document["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in document["panels"]}) == len(document["panels"])
    for panel in panels:
        source = panel["datasource"]
        assert source["uid"] == "${" + kinds[source["type"]] + "}"
        assert variables[kinds[source["type"]]]["query"] == source["type"]
        assert all(target["datasource"] == source for target in panel["targets"])
    assert any(p["type"] == "logs" for p in panels)
    assert any(p["datasource"]["type"] == "tempo" for p in panels)
    assert any(t.get("exemplar") for p in panels for t in p["targets"])


def test_cluster_only_panels_query_only_cluster_metrics_and_the_rest_none() -> None:
    for dashboard, expr, panel in prometheus_exprs():
        cluster_only = panel["description"].startswith(dashboards.CLUSTER_ONLY)
        assert bool(CLUSTER_METRIC.search(expr)) == cluster_only, (dashboard, panel["title"])


def test_every_exported_metric_is_on_a_dashboard_or_in_a_rule() -> None:
    metrics = PlatformMetrics(service_name="items", services=["items"])
    metrics.part(WorkerMetrics)
    exported = {family.name for family in text_string_to_metric_families(_exposition(metrics))}
    used = " ".join([expr for _, expr, _ in prometheus_exprs()] + rule_exprs())
    # Virtual memory says little about a Python process; resident memory is charted.
    unused = {name for name in exported if name not in used} - {"process_virtual_memory_bytes"}
    assert not unused, f"exported but shown nowhere: {sorted(unused)}"


def _exposition(metrics: PlatformMetrics) -> str:
    from prometheus_client import generate_latest  # noqa: PLC0415

    return generate_latest(metrics.registry).decode()


def test_datasources_link_metrics_logs_and_traces() -> None:
    sources = {source["type"]: source for source in load(DATASOURCES)["datasources"]}
    assert set(sources) == {"prometheus", "loki", "tempo"}
    tempo = sources["tempo"]["uid"]
    (exemplar,) = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    # The label our exemplars carry (regatta.common.telemetry.observability.trace_exemplar).
    assert exemplar == {**exemplar, "name": "trace_id", "datasourceUid": tempo}
    (derived,) = sources["loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == tempo
    # `$$` is provisioning's escape for a literal `$`: Grafana sees ${__value.raw}.
    assert derived["url"] == "$${__value.raw}"
    to_logs = sources["tempo"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == sources["loki"]["uid"]
    assert {"key": "service.name", "value": "service_name"} in to_logs["tags"]


def test_the_collector_receives_what_the_services_send_and_forwards_it() -> None:
    config = load(OBSERVABILITY / "otel-collector" / "config.yaml")
    # The services export OTLP over HTTP, which collectors receive on 4318.
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), kind
    assert config["service"]["pipelines"]["traces"]["processors"][0] == "memory_limiter"
    assert set(config["service"]["extensions"]) <= set(config["extensions"])


def test_alloy_parses_the_fields_our_log_lines_have_and_keeps_labels_bounded() -> None:
    import logging  # noqa: PLC0415

    text = (OBSERVABILITY / "alloy" / "config.alloy").read_text()
    block = re.search(r"stage\.json \{\s*expressions = \{(.*?)\}", text, re.DOTALL)
    assert block is not None
    extracted = dict(re.findall(r'(\w+)\s*=\s*"(\w+)"', block.group(1)))
    record = logging.LogRecord("regatta.access", logging.INFO, __file__, 1, "GET /", (), None)
    record.event = "request"
    line = json.loads(JsonFormatter("items").format(record))
    optional = {"trace_id", "span_id", "request_id"}  # present inside requests and spans
    assert set(extracted.values()) - optional <= set(line)
    labels = re.search(r"stage\.labels \{\s*values = \{(.*?)\}", text, re.DOTALL)
    assert labels is not None
    label_names = set(re.findall(r"(\w+)\s*=", labels.group(1)))
    assert label_names == {"level", "event", "service_name"}
    metadata = re.search(r"stage\.structured_metadata \{\s*values = \{(.*?)\}", text, re.DOTALL)
    assert metadata is not None
    # Discovery labels other than namespace would multiply streams by pods: metadata only.
    discovered = set(re.findall(r'target_label\s*=\s*"(\w+)"', text)) - {"namespace"}
    assert set(re.findall(r"(\w+)\s*=", metadata.group(1))) == optional | discovered


def test_grafana_assumes_the_scrape_interval_the_chart_sets() -> None:
    # $__rate_interval is four times timeInterval: set shorter than the scrape, a rate window
    # holds two samples and panels flicker.
    values = yaml.safe_load((ROOT / "charts" / "regatta" / "values.yaml").read_text())
    datasources = yaml.safe_load(
        (OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "regatta.yaml").read_text()
    )["datasources"]
    prometheus = next(source for source in datasources if source["type"] == "prometheus")
    assert prometheus["jsonData"]["timeInterval"] == values["metrics"]["serviceMonitor"]["interval"]
