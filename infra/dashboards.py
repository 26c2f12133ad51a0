"""Build the Grafana dashboards in ``observability/grafana/dashboards/``.

    uv run python infra/dashboards.py          # rewrite the JSON files and the chart's copies
    uv run python infra/dashboards.py --check  # exit 1 if any is out of date

The chart's copies (``charts/regatta/files/dashboards/`` and ``files/rules/``, the rule files
copied from ``observability/prometheus/rules/``) are written too, so they never drift.

One overview of the platform and one dashboard per service, built from the same few panel
builders so they stay consistent. Every Prometheus query is evaluated by
``tests/observability/test_prometheus.py`` against a real Prometheus scraping the services; a
panel about the cluster (cAdvisor, kube-state-metrics) says so in its description, starting
with ``Cluster only:``, and is the only kind that test skips.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "observability" / "grafana" / "dashboards"
RULES = ROOT / "observability" / "prometheus" / "rules"
# The chart ships copies of both (charts/regatta/files/), written here with the dashboards.
CHART_FILES = ROOT / "charts" / "regatta" / "files"
CLUSTER_ONLY = "Cluster only:"
# Panels empty where there is no Redis (`make up` without REDIS_URL) say so the same way.
NEEDS_REDIS = "With Redis:"
RATE = "$__rate_interval"
NS = 'namespace=~"$namespace"'
# Per-pod and per-route drill-down of the service dashboards ("All" matches series without
# the label too: outside Kubernetes there is no pod).
POD = 'pod=~"$pod"'
ROUTE = 'handler=~"$route"'
PROMETHEUS = {"type": "prometheus", "uid": "${datasource}"}
LOKI = {"type": "loki", "uid": "${loki}"}
TEMPO = {"type": "tempo", "uid": "${tempo}"}
# The availability and latency objectives of observability/prometheus/rules/regatta-slo.yaml.
AVAILABILITY_BUDGET = 0.001
LATENCY_BUDGET = 0.01
SERVICES = ("items", "heroes", "notifications")
WORKER = "notifications-worker"
# The all-in-one process of `make up` names itself so in process-level metrics.
EMBEDDED = "regatta"

Panel = dict[str, Any]


def selector(*matchers: str) -> str:
    """A label selector with the namespace filter every query carries."""
    return "{" + ", ".join((NS, *matchers)) + "}"


def ratio(numerator: str, denominator: str, by: str = "") -> str:
    """``numerator / denominator`` that is 0, not empty, while the numerator has no series."""
    grouping = f" by ({by})" if by else ""
    return (
        f"(sum{grouping} ({numerator}) or sum{grouping} ({denominator}) * 0)"
        f" / sum{grouping} ({denominator})"
    )


def loki_link(title: str, services: str, line_filter: str = "") -> dict[str, Any]:
    """A data link opening Explore on Loki with the matching log lines, in the panel's range."""
    query = f'{{{NS}, service_name=~"{services}"}} | json{line_filter}'
    pane = {
        "a": {
            "datasource": "${loki}",
            "queries": [{"refId": "A", "expr": query, "datasource": LOKI}],
            "range": {"from": "${__from}", "to": "${__to}"},
        }
    }
    encoded = json.dumps(pane, separators=(",", ":")).replace('"', "%22").replace(" ", "%20")
    return {"title": title, "url": f"/explore?schemaVersion=1&panes={encoded}"}


def quantile(q: float, bucket_selector: str, metric: str, by: str = "") -> str:
    """The ``q`` quantile of a histogram's recent observations."""
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) "
        f"(rate({metric}_bucket{bucket_selector}[{RATE}])))"
    )


@dataclass
class Target:
    """One query of a panel."""

    expr: str
    legend: str = ""
    exemplar: bool = False


@dataclass
class Layout:
    """Places panels left to right, row by row, on Grafana's 24-column grid."""

    panels: list[Panel] = field(default_factory=list)
    x: int = 0
    y: int = 0
    row_height: int = 0
    next_id: int = 1

    def row(self, title: str) -> None:
        """Start a titled row."""
        self.newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: Panel, *, width: int = 8, height: int = 8) -> None:
        """Place ``panel``, wrapping to a new line when the row is full."""
        if self.x + width > 24:  # noqa: PLR2004 -- Grafana's grid is 24 columns wide
            self.newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def newline(self) -> None:
        """Continue below the tallest panel of the current line."""
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def timeseries(
    title: str,
    description: str,
    targets: list[Target],
    *,
    unit: str = "short",
    stack: bool = False,
    links: list[dict[str, Any]] | None = None,
) -> Panel:
    """A Prometheus time series panel; ``links`` are data links (to Loki) on its series."""
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
                "links": links or [],
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": PROMETHEUS,
                "expr": target.expr,
                "legendFormat": target.legend or "__auto",
                "range": True,
                "exemplar": target.exemplar,
            }
            for index, target in enumerate(targets)
        ],
    }


def stat(title: str, description: str, expr: str, *, unit: str, legend: str = "") -> Panel:
    """A Prometheus single-value panel."""
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 3}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
        "targets": [
            {
                "refId": "A",
                "datasource": PROMETHEUS,
                "expr": expr,
                "legendFormat": legend or "__auto",
                "instant": True,
            }
        ],
    }


def logs(title: str, description: str, expr: str) -> Panel:
    """A Loki logs panel; each line's trace_id links to its trace (datasource derived field)."""
    return {
        "type": "logs",
        "title": title,
        "description": description,
        "datasource": LOKI,
        "options": {
            "showTime": True,
            "wrapLogMessage": True,
            "prettifyLogMessage": False,
            "enableLogDetails": True,
            "sortOrder": "Descending",
            "dedupStrategy": "none",
        },
        "targets": [{"refId": "A", "datasource": LOKI, "expr": expr, "queryType": "range"}],
    }


def traces(title: str, description: str, traceql: str) -> Panel:
    """A Tempo search: recent matching traces, each row a link to its trace."""
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": TEMPO,
        "targets": [
            {
                "refId": "A",
                "datasource": TEMPO,
                "queryType": "traceql",
                "query": traceql,
                "limit": 20,
                "tableType": "traces",
            }
        ],
    }


def variables() -> dict[str, Any]:
    """Datasources (so the dashboards work with any Grafana) and the namespace filter."""
    sources = [
        {
            "name": name,
            "label": label,
            "type": "datasource",
            "query": kind,
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "includeAll": False,
            "multi": False,
        }
        for name, label, kind in (
            ("datasource", "Prometheus", "prometheus"),
            ("loki", "Loki", "loki"),
            ("tempo", "Tempo", "tempo"),
        )
    ]
    namespace = {
        "name": "namespace",
        "label": "Namespace",
        "type": "query",
        "datasource": PROMETHEUS,
        "definition": "label_values(http_requests_total, namespace)",
        "query": {"query": "label_values(http_requests_total, namespace)", "refId": "namespace"},
        "refresh": 2,
        "sort": 1,
        "includeAll": True,
        # Matches series without the label too (a Prometheus outside Kubernetes).
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
    }
    drill_down = [
        {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": PROMETHEUS,
            "definition": query,
            "query": {"query": query, "refId": name},
            "refresh": 2,
            "sort": 1,
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0,
        }
        for name, label, query in (
            ("pod", "Pod", f"label_values(regatta_up{{{NS}}}, pod)"),
            ("route", "Route", f"label_values(http_requests_total{{{NS}}}, handler)"),
        )
    ]
    return {"list": [*sources, namespace, *drill_down]}


def dashboard(uid: str, title: str, description: str, layout: Layout) -> dict[str, Any]:
    """The dashboard document Grafana provisions."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["regatta"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [
            {
                "title": "Regatta dashboards",
                "type": "dashboards",
                "tags": ["regatta"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": variables(),
        "panels": layout.panels,
    }


# --- Panels shared by the dashboards -----------------------------------------------------------


def red_panels(layout: Layout, service: str) -> None:
    """Rate, errors and duration of one service's requests, by route."""
    s = selector(f'service_name="{service}"', POD, ROUTE)
    requests = f"rate(http_requests_total{s}[{RATE}])"
    failed = selector(f'service_name="{service}"', POD, ROUTE, 'status=~"5.."')
    errors = f"rate(http_requests_total{failed}[{RATE}])"
    logs_of = f"{service}|{EMBEDDED}"
    route_logs = loki_link(
        "Log lines of this route", logs_of, ' | route="${__field.labels.handler}"'
    )
    layout.row("Requests")
    layout.add(
        timeseries(
            "Request rate by route",
            "Requests answered per second, by method and route template; a series links to "
            "the route's log lines.",
            [Target(f"sum by (method, handler) ({requests})", "{{method}} {{handler}}")],
            unit="reqps",
            stack=True,
            links=[route_logs],
        )
    )
    layout.add(
        timeseries(
            "Responses by status",
            "Responses per second by status code; 429 means rate-limited. A series links to "
            "the log lines with that status.",
            [Target(f"sum by (status) ({requests})", "{{status}}")],
            unit="reqps",
            stack=True,
            links=[
                loki_link(
                    "Log lines with this status", logs_of, " | status=${__field.labels.status}"
                )
            ],
        )
    )
    layout.add(
        timeseries(
            "Server error ratio",
            "Share of requests answered with a 5xx. The availability objective allows 0.1 %.",
            [Target(ratio(errors, requests), "5xx ratio")],
            unit="percentunit",
        )
    )
    layout.add(
        timeseries(
            "Latency p50 / p95 / p99",
            "Time to answer, from the request's arrival to the end of the response. Exemplars "
            "link a point to the trace of a request that took that long.",
            [
                Target(
                    quantile(q, s, "http_request_duration_seconds"),
                    f"p{round(q * 100)}",
                    exemplar=True,
                )
                for q in (0.5, 0.95, 0.99)
            ],
            unit="s",
        )
    )
    layout.add(
        timeseries(
            "Latency p95 by route",
            "95th percentile response time of each route; a series links to the route's "
            "slowest log lines.",
            [
                Target(
                    quantile(0.95, s, "http_request_duration_seconds", "method, handler"),
                    "{{method}} {{handler}}",
                )
            ],
            unit="s",
            links=[
                loki_link(
                    "Slow log lines of this route",
                    logs_of,
                    ' | route="${__field.labels.handler}" | duration_ms > 250',
                )
            ],
        )
    )
    layout.add(
        timeseries(
            "Rate-limited requests",
            "Requests refused with 429 Too Many Requests.",
            [
                Target(
                    f"sum(rate(regatta_rate_limited_requests_total{s}[{RATE}]))", "429 per second"
                )
            ],
            unit="reqps",
        )
    )
    layout.add(fail_open_panel(selector(f'service_name=~"{service}|{EMBEDDED}"', POD)))


def fail_open_panel(s: str) -> Panel:
    """Requests let through unchecked because the rate limiter could not reach Redis."""
    return timeseries(
        "Rate limiter failing open",
        "Requests served without a rate-limit check because Redis did not answer (the limiter "
        "fails open), by service. Above 0 for 5 minutes: RegattaRateLimiterFailingOpen.",
        [
            Target(
                f"sum by (service_name) (rate(regatta_rate_limit_unavailable_total{s}[{RATE}]))",
                "{{service_name}}",
            )
        ],
        unit="reqps",
    )


def writes_panels(layout: Layout, service: str, *, cached: bool) -> None:
    """The response cache (for services that cache) and idempotent creates."""
    s = selector(f'service_name="{service}"')
    layout.row("Cache and idempotent writes" if cached else "Idempotent writes")
    if cached:
        lookups = f"rate(regatta_cache_requests_total{s}[{RATE}])"
        hit = selector(f'service_name="{service}"', 'result="hit"')
        hits = f"rate(regatta_cache_requests_total{hit}[{RATE}])"
        layout.add(
            timeseries(
                "Cache hit ratio",
                "Share of single-resource reads served from the response cache.",
                [Target(ratio(hits, lookups), "hit ratio")],
                unit="percentunit",
            )
        )
        layout.add(
            timeseries(
                "Cache look-ups",
                "Cache look-ups per second, hits and misses.",
                [Target(f"sum by (result) ({lookups})", "{{result}}")],
                unit="ops",
                stack=True,
            )
        )
    layout.add(
        timeseries(
            "Idempotency-Key outcomes",
            "Creating requests carrying an Idempotency-Key: stored (first time), replayed (a "
            "retry got the first response), conflict (still in flight), mismatch (key reused).",
            [
                Target(
                    f"sum by (outcome) (rate(regatta_idempotency_requests_total{s}[{RATE}]))",
                    "{{outcome}}",
                )
            ],
            unit="reqps",
            stack=True,
        )
    )


def outbox_panels(layout: Layout, service: str) -> None:
    """Platform events waiting in the service's outbox and how fast they leave it."""
    s = selector(f'service_name="{service}"')
    layout.row("Platform events (outbox)")
    layout.add(
        timeseries(
            "Outbox backlog",
            "Events committed but not yet relayed to the stream, and the age of the oldest.",
            [
                Target(f"max(regatta_outbox_backlog{s})", "events waiting"),
            ],
        )
    )
    layout.add(
        timeseries(
            "Oldest waiting event",
            "How long the oldest unrelayed event has waited (0 when the outbox is empty).",
            [Target(f"max(regatta_outbox_oldest_age_seconds{s})", "oldest")],
            unit="s",
        )
    )
    layout.add(
        timeseries(
            "Relay lag and throughput",
            "Time from an event's commit to its publication (p95), events relayed per second "
            "and failed relay rounds per second.",
            [
                Target(quantile(0.95, s, "regatta_outbox_relay_lag_seconds"), "lag p95 (s)"),
                Target(f"sum(rate(regatta_outbox_relayed_total{s}[{RATE}]))", "relayed / s"),
                Target(f"sum(rate(regatta_outbox_relay_errors_total{s}[{RATE}]))", "errors / s"),
            ],
        )
    )


def saturation_panels(layout: Layout, services: tuple[str, ...], *matchers: str) -> None:
    """Pool usage, CPU and memory of the processes, and of their containers in a cluster.

    Process-level series also match the all-in-one process of ``make up`` (``regatta``).
    """
    names = "|".join(services)
    s = selector(f'service_name=~"{names}|{EMBEDDED}"', *matchers)
    layout.row("Saturation")
    layout.add(
        timeseries(
            "Database pool usage",
            "Connections in use over the pool's size, per process kind; above 100 % the pool "
            "is using overflow connections, and requests soon wait for one.",
            [
                Target(
                    f"sum by (service_name) (regatta_db_pool_checked_out{s})"
                    f" / sum by (service_name) (regatta_db_pool_size{s})",
                    "{{service_name}}",
                )
            ],
            unit="percentunit",
        )
    )
    layout.add(
        timeseries(
            "Process CPU",
            "CPU seconds per second used by each process.",
            [
                Target(
                    f"sum by (service_name, instance) (rate(process_cpu_seconds_total{s}[{RATE}]))",
                    "{{service_name}} {{instance}}",
                )
            ],
            unit="percentunit",
        )
    )
    layout.add(
        timeseries(
            "Process memory",
            "Resident memory of each process.",
            [
                Target(
                    f"sum by (service_name, instance) (process_resident_memory_bytes{s})",
                    "{{service_name}} {{instance}}",
                )
            ],
            unit="bytes",
        )
    )
    layout.add(
        timeseries(
            "Open file descriptors",
            "File descriptors (sockets, files) each process holds, over its limit.",
            [
                Target(
                    f"max by (service_name, instance) (process_open_fds{s})"
                    f" / max by (service_name, instance) (process_max_fds{s})",
                    "{{service_name}} {{instance}}",
                )
            ],
            unit="percentunit",
        )
    )
    layout.add(
        timeseries(
            "Process restarts",
            "Times each process started anew within the last hour (crashes, OOM kills, deploys).",
            [
                Target(
                    f"changes(process_start_time_seconds{s}[1h])",
                    "{{service_name}} {{instance}}",
                )
            ],
        )
    )
    container = f'{NS}, container=~"{names}"'
    layout.add(
        timeseries(
            "Container CPU",
            f"{CLUSTER_ONLY} cAdvisor's CPU usage of each container, against its limit.",
            [
                Target(
                    "sum by (container) (rate(container_cpu_usage_seconds_total"
                    f"{{{container}}}[{RATE}]))",
                    "{{container}}",
                ),
                Target(
                    "sum by (container) (kube_pod_container_resource_limits"
                    f'{{{container}, resource="cpu"}})',
                    "{{container}} limit",
                ),
            ],
        )
    )
    layout.add(
        timeseries(
            "Container memory",
            f"{CLUSTER_ONLY} cAdvisor's working set of each container, against its limit.",
            [
                Target(
                    f"sum by (container) (container_memory_working_set_bytes{{{container}}})",
                    "{{container}}",
                ),
                Target(
                    "sum by (container) (kube_pod_container_resource_limits"
                    f'{{{container}, resource="memory"}})',
                    "{{container}} limit",
                ),
            ],
            unit="bytes",
        )
    )
    layout.add(
        timeseries(
            "Replicas (HPA)",
            f"{CLUSTER_ONLY} kube-state-metrics' current and desired replicas of each "
            "HorizontalPodAutoscaler.",
            [
                Target(
                    "sum by (horizontalpodautoscaler) "
                    "(kube_horizontalpodautoscaler_status_current_replicas"
                    f'{{{NS}, horizontalpodautoscaler=~".*-({names})"}})',
                    "{{horizontalpodautoscaler}} current",
                ),
                Target(
                    "sum by (horizontalpodautoscaler) "
                    "(kube_horizontalpodautoscaler_status_desired_replicas"
                    f'{{{NS}, horizontalpodautoscaler=~".*-({names})"}})',
                    "{{horizontalpodautoscaler}} desired",
                ),
            ],
        )
    )


def delivery_panels(layout: Layout) -> None:
    """Notification deliveries, their queue and the platform event stream."""
    s = selector()
    layout.row("Deliveries")
    attempts = f"rate(regatta_deliveries_total{s}[{RATE}])"
    layout.add(
        timeseries(
            "Delivery outcomes",
            "Delivery attempts per second by channel and outcome: delivered, retry (will be "
            "tried again) or failed (given up).",
            [Target(f"sum by (channel, outcome) ({attempts})", "{{channel}} {{outcome}}")],
            unit="ops",
            stack=True,
        )
    )
    success = selector('outcome="delivered"')
    delivered = f"rate(regatta_deliveries_total{success}[{RATE}])"
    layout.add(
        timeseries(
            "Delivery success ratio",
            "Share of attempts that delivered, by channel.",
            [Target(ratio(delivered, attempts, "channel"), "{{channel}}")],
            unit="percentunit",
        )
    )
    layout.add(
        timeseries(
            "Delivery latency p95",
            "From acceptance (202) to the final outcome, retries included, by channel; and the "
            "duration of one attempt.",
            [
                Target(
                    quantile(0.95, s, "regatta_delivery_latency_seconds", "channel"),
                    "{{channel}} accepted → done",
                    exemplar=True,
                ),
                Target(
                    quantile(0.95, s, "regatta_delivery_attempt_duration_seconds", "channel"),
                    "{{channel}} one attempt",
                    exemplar=True,
                ),
            ],
            unit="s",
        )
    )
    layout.add(
        timeseries(
            "Attempts per notification",
            "Average attempts a notification took to reach its final outcome.",
            [
                Target(
                    f"sum by (channel) (rate(regatta_delivery_attempts_sum{s}[{RATE}]))"
                    f" / sum by (channel) (rate(regatta_delivery_attempts_count{s}[{RATE}]))",
                    "{{channel}}",
                )
            ],
        )
    )
    layout.add(
        timeseries(
            "Delivery queue",
            "Notifications due and waiting for a worker, and how long the oldest has waited.",
            [
                Target(f"max(regatta_delivery_backlog{s})", "due"),
                Target(f"max(regatta_delivery_oldest_due_seconds{s})", "oldest wait (s)"),
            ],
        )
    )
    layout.add(
        timeseries(
            "Event stream",
            "Entries of the platform event stream not yet read by the notifications consumer "
            "group (lag), read but unacknowledged (pending), and events handled per second.",
            [
                Target(f"max by (group) (regatta_stream_consumer_lag{s})", "{{group}} lag"),
                Target(f"max by (group) (regatta_stream_pending{s})", "{{group}} pending"),
                Target(
                    f"sum by (group) (rate(regatta_events_consumed_total{s}[{RATE}]))",
                    "{{group}} handled / s",
                ),
            ],
        )
    )
    layout.add(
        timeseries(
            "Event lag p95",
            "From a change's commit to its event being handled by the consumer group.",
            [Target(quantile(0.95, s, "regatta_event_lag_seconds", "group"), "{{group}}")],
            unit="s",
        )
    )


def logs_and_traces(layout: Layout, services: tuple[str, ...]) -> None:
    """Recent log lines (a trace_id opens the trace) and recent slow traces."""
    names = "|".join(services)
    layout.row("Logs and traces")
    layout.add(
        logs(
            "Logs",
            "Log lines of these processes from Loki, newest first; a line's trace_id links to "
            "its trace in Tempo.",
            f'{{{NS}, service_name=~"{names}|{EMBEDDED}"}} | json',
        ),
        width=14,
        height=10,
    )
    layout.add(
        traces(
            "Slow traces",
            "Recent traces over 250 ms (the latency objective); click one to open it.",
            f'{{resource.service.name =~ "{names}" && duration > 250ms}}',
        ),
        width=10,
        height=10,
    )


def why_slow_panels(layout: Layout, service: str, processes: tuple[str, ...]) -> None:
    """Where a request's time goes: the pool, the statements, Redis; and the servers' side."""
    names = "|".join((*processes, EMBEDDED))
    process = selector(f'service_name=~"{names}"', POD)
    keyed = selector(f'service_name="{service}"', POD)
    logs_of = f"{service}|{EMBEDDED}"
    layout.row("Why is it slow")
    layout.add(
        timeseries(
            "Database pool wait",
            "Time to get a pooled connection (p95, p99) and the requests that gave up after "
            "the pool timeout (503) per second. Waits without slow statements: the pool is "
            "too small for the load.",
            [
                Target(quantile(0.95, process, "regatta_db_pool_wait_seconds"), "wait p95 (s)"),
                Target(quantile(0.99, process, "regatta_db_pool_wait_seconds"), "wait p99 (s)"),
                Target(
                    f"sum(rate(regatta_db_pool_timeouts_total{process}[{RATE}]))",
                    "timeouts / s",
                ),
            ],
            links=[loki_link("Unavailable answers", logs_of, " | status=503")],
        )
    )
    layout.add(
        timeseries(
            "Statement latency p95",
            "Duration of SQL statements by operation (statement timeouts included). Slow "
            "statements and no pool wait: the database is the bottleneck.",
            [
                Target(
                    quantile(0.95, process, "regatta_db_statement_duration_seconds", "operation"),
                    "{{operation}}",
                )
            ],
            unit="s",
        )
    )
    layout.add(
        timeseries(
            "Redis round trip p95",
            f"{NEEDS_REDIS} duration of Redis round trips by operation: cache reads and "
            "stores, rate-limit checks.",
            [
                Target(
                    quantile(0.95, process, "regatta_redis_command_duration_seconds", "operation"),
                    "{{operation}}",
                )
            ],
            unit="s",
        )
    )
    layout.add(
        timeseries(
            "Cache errors",
            "Response cache operations that failed per second (reads are then served from the "
            "database, writes retried): Redis is unreachable or refusing.",
            [
                Target(
                    f"sum by (operation) (rate(regatta_cache_errors_total{keyed}[{RATE}]))",
                    "{{operation}}",
                )
            ],
            unit="ops",
            links=[loki_link("Cache warnings", logs_of, ' |= "cache"')],
        )
    )
    layout.add(
        timeseries(
            "Postgres",
            f"{CLUSTER_ONLY} postgres_exporter (or CloudNativePG's own metrics): whether the "
            "server answers, its backends by state and the longest-running transaction.",
            [
                Target(f"max(pg_up{{{NS}}})", "up"),
                Target(f"sum by (state) (pg_stat_activity_count{{{NS}}})", "{{state}}"),
                Target(f"max(pg_stat_activity_max_tx_duration{{{NS}}})", "longest transaction (s)"),
                Target(f"sum(cnpg_backends_total{{{NS}}})", "backends (CloudNativePG)"),
            ],
        )
    )
    layout.add(
        timeseries(
            "Redis",
            f"{CLUSTER_ONLY} redis_exporter: whether Redis answers, its clients, commands per "
            "second and memory in use against its limit.",
            [
                Target(f"max(redis_up{{{NS}}})", "up"),
                Target(f"sum(redis_connected_clients{{{NS}}})", "clients"),
                Target(
                    f"sum(rate(redis_commands_processed_total{{{NS}}}[{RATE}]))", "commands / s"
                ),
                Target(
                    f"max(redis_memory_used_bytes{{{NS}}}) / max(redis_memory_max_bytes{{{NS}}})",
                    "memory used / max",
                ),
            ],
        )
    )


# --- The dashboards ----------------------------------------------------------------------------


def overview() -> dict[str, Any]:
    """The platform at a glance: every service side by side."""
    layout = Layout()
    s = selector()
    requests = f"rate(http_requests_total{s}[{RATE}])"
    failed = selector('status=~"5.."')
    errors = f"rate(http_requests_total{failed}[{RATE}])"
    layout.row("Traffic")
    layout.add(
        timeseries(
            "Request rate",
            "Requests answered per second, by service.",
            [Target(f"sum by (service_name) ({requests})", "{{service_name}}")],
            unit="reqps",
            stack=True,
        )
    )
    layout.add(
        timeseries(
            "Server error ratio",
            "Share of requests answered with a 5xx, by service (objective: 99.9 % available).",
            [Target(ratio(errors, requests, "service_name"), "{{service_name}}")],
            unit="percentunit",
        )
    )
    layout.add(
        timeseries(
            "Rate-limited requests",
            "Requests refused with 429, by service.",
            [
                Target(
                    f"sum by (service_name) (rate(regatta_rate_limited_requests_total{s}[{RATE}]))",
                    "{{service_name}}",
                )
            ],
            unit="reqps",
        )
    )
    for q in (0.5, 0.95, 0.99):
        layout.add(
            timeseries(
                f"Latency p{round(q * 100)}",
                f"{round(q * 100)}th percentile response time by service; exemplars link to "
                "traces.",
                [
                    Target(
                        quantile(q, s, "http_request_duration_seconds", "service_name"),
                        "{{service_name}}",
                        exemplar=True,
                    )
                ],
                unit="s",
            )
        )
    layout.row("Service level objectives")
    layout.add(
        timeseries(
            "Availability budget burn rate (1 h)",
            "How fast each service spends its error budget (99.9 % of requests without a "
            "5xx): 1 spends it exactly over 30 days, 14.4 pages.",
            [
                Target(
                    f"service_name:slo_availability_errors:ratio_rate1h{s} / {AVAILABILITY_BUDGET}",
                    "{{service_name}}",
                )
            ],
        )
    )
    layout.add(
        timeseries(
            "Latency budget burn rate (1 h)",
            "How fast each service spends its latency budget (99 % of requests within 250 ms).",
            [
                Target(
                    f"service_name:slo_latency_slow:ratio_rate1h{s} / {LATENCY_BUDGET}",
                    "{{service_name}}",
                )
            ],
        )
    )
    layout.add(
        stat(
            "Availability (3 days)",
            "Share of requests without a 5xx over the last three days, by service.",
            f"1 - service_name:slo_availability_errors:ratio_rate3d{s}",
            unit="percentunit",
            legend="{{service_name}}",
        )
    )
    saturation_panels(layout, (*SERVICES, WORKER))
    layout.row("Caches and queues")
    lookups = f"rate(regatta_cache_requests_total{s}[{RATE}])"
    hit = selector('result="hit"')
    hits = f"rate(regatta_cache_requests_total{hit}[{RATE}])"
    layout.add(
        timeseries(
            "Cache hit ratio",
            "Share of single-resource reads served from the response cache, by service.",
            [Target(ratio(hits, lookups, "service_name"), "{{service_name}}")],
            unit="percentunit",
        )
    )
    replayed = selector('outcome="replayed"')
    layout.add(
        timeseries(
            "Idempotent replays",
            "Retried creates answered with the first response, per second, by service.",
            [
                Target(
                    "sum by (service_name) (rate(regatta_idempotency_requests_total"
                    f"{replayed}[{RATE}]))",
                    "{{service_name}}",
                )
            ],
            unit="reqps",
        )
    )
    layout.add(
        timeseries(
            "Queue lag",
            "Oldest event waiting in each outbox, oldest due notification, and the event "
            "stream's unread entries.",
            [
                Target(
                    f"max by (service_name) (regatta_outbox_oldest_age_seconds{s})",
                    "outbox {{service_name}} oldest (s)",
                ),
                Target(f"max(regatta_delivery_oldest_due_seconds{s})", "deliveries oldest (s)"),
                Target(f"max by (group) (regatta_stream_consumer_lag{s})", "stream {{group}} lag"),
            ],
        )
    )
    layout.add(
        timeseries(
            "Outbox relay lag p95",
            "From a change's commit to its event's publication on the stream, by service.",
            [
                Target(
                    quantile(0.95, s, "regatta_outbox_relay_lag_seconds", "service_name"),
                    "{{service_name}}",
                )
            ],
            unit="s",
        )
    )
    layout.add(
        timeseries(
            "Delivery outcomes",
            "Delivery attempts per second by channel and outcome.",
            [
                Target(
                    f"sum by (channel, outcome) (rate(regatta_deliveries_total{s}[{RATE}]))",
                    "{{channel}} {{outcome}}",
                )
            ],
            unit="ops",
            stack=True,
        )
    )
    layout.add(
        timeseries(
            "Delivery latency p95",
            "From acceptance to final outcome, retries included, by channel.",
            [
                Target(
                    quantile(0.95, s, "regatta_delivery_latency_seconds", "channel"),
                    "{{channel}}",
                    exemplar=True,
                )
            ],
            unit="s",
        )
    )
    layout.row("Logs and traces")
    layout.add(
        logs(
            "Warnings and errors",
            "Log lines at WARNING or above from every Regatta process; a trace_id links to its "
            "trace.",
            f'{{{NS}, service_name=~"{"|".join((*SERVICES, WORKER, EMBEDDED))}"}} | json '
            '| level=~"WARNING|ERROR|CRITICAL"',
        ),
        width=14,
        height=10,
    )
    layout.add(
        traces(
            "Slow traces",
            "Recent traces over 250 ms, every service.",
            '{resource.service.name =~ "items|heroes|notifications|notifications-worker" '
            "&& duration > 250ms}",
        ),
        width=10,
        height=10,
    )
    layout.row("Dead-man and fail-open")
    layout.add(
        timeseries(
            "Processes reporting",
            "Regatta processes Prometheus scrapes, by kind. A kind that drops to nothing fires "
            "RegattaWorkloadDown; notifications without notifications-worker fire "
            "RegattaNotificationsWorkersDown.",
            [Target(f"count by (service_name) (regatta_up{s})", "{{service_name}}")],
        )
    )
    layout.add(fail_open_panel(s))
    layout.add(
        timeseries(
            "Oldest due notification",
            "How long the longest-waiting due notification has waited, as the workers see it. "
            "No line at all means no worker reports: the queue is stuck.",
            [Target(f"max(regatta_delivery_oldest_due_seconds{s})", "oldest wait")],
            unit="s",
        )
    )
    return dashboard(
        "regatta-overview",
        "Regatta / Overview",
        "Rate, errors and latency of every service, objectives, saturation, queues and deliveries.",
        layout,
    )


def service_dashboard(service: str) -> dict[str, Any]:
    """One service in depth."""
    layout = Layout()
    red_panels(layout, service)
    writes_panels(layout, service, cached=service != "notifications")
    if service == "notifications":
        delivery_panels(layout)
        processes: tuple[str, ...] = (service, WORKER)
    else:
        outbox_panels(layout, service)
        processes = (service,)
    saturation_panels(layout, processes, POD)
    logs_and_traces(layout, processes)
    why_slow_panels(layout, service, processes)
    return dashboard(
        f"regatta-{service}",
        f"Regatta / {service.capitalize()}",
        f"The {service} service: requests by route, "
        + ("deliveries and the event stream" if service == "notifications" else "cache, outbox")
        + ", saturation, logs and traces.",
        layout,
    )


def render() -> dict[str, str]:
    """Every dashboard file's name and content."""
    documents = {"regatta-overview.json": overview()} | {
        f"regatta-{service}.json": service_dashboard(service) for service in SERVICES
    }
    return {
        name: json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        for name, document in documents.items()
    }


def outputs() -> dict[Path, str]:
    """Every file this script writes: the dashboards and the chart's copies (rules too)."""
    dashboards = render()
    rules = {path.name: path.read_text() for path in sorted(RULES.glob("*.yaml"))}
    return (
        {DASHBOARDS / name: content for name, content in dashboards.items()}
        | {CHART_FILES / "dashboards" / name: content for name, content in dashboards.items()}
        | {CHART_FILES / "rules" / name: content for name, content in rules.items()}
    )


def main(argv: list[str]) -> int:
    """Write the dashboards and the chart's copies, or with ``--check`` report stale ones."""
    wanted = outputs()
    stale = [path for path, content in wanted.items() if not _holds(path, content)]
    # A copy whose source is gone would still ship with the chart.
    stale += [
        path
        for kind, pattern in (("dashboards", "*.json"), ("rules", "*.yaml"))
        for path in sorted((CHART_FILES / kind).glob(pattern))
        if path not in wanted
    ]
    if "--check" in argv:
        if stale:
            names = ", ".join(str(path.relative_to(ROOT)) for path in stale)
            sys.stderr.write(f"out of date: {names}; run python infra/dashboards.py\n")
            return 1
        return 0
    for path in stale:
        if path in wanted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path])
        else:
            path.unlink()
    return 0


def _holds(path: Path, content: str) -> bool:
    return path.exists() and path.read_text() == content


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
