"""What every install holds: probes, resources, hardening, scaling, budgets, routes, policies."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.chart.manifests import (
    APIS,
    REPO,
    Manifest,
    Rendered,
    env_of,
    load_yaml,
    pod_labels,
    pod_spec,
    render,
    render_set,
    tier,
    value_sets,
)

SETS = list(value_sets())
SERVING_TIERS = {"api", "worker", "operator"}
TMP = "/tmp"  # noqa: S108 -- the mount point the pods must have, not a file written here
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 -- what HOST must be inside a container


def _enabled_apis(value_set: str) -> list[str]:
    services = value_sets()[value_set].get("services", {})
    defaults = {"items": True, "heroes": True, "notifications": True}
    return [name for name in APIS if services.get(name, {}).get("enabled", defaults[name])]


def _serving(rendered: Rendered) -> list[Manifest]:
    return [obj for obj in rendered.kind("Deployment") if tier(obj) in SERVING_TIERS]


def _min_replicas(rendered: Rendered, deployment: Manifest) -> int:
    name = deployment["metadata"]["name"]
    for hpa in rendered.kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return int(hpa["spec"]["minReplicas"])
    for scaled in rendered.kind("ScaledObject"):
        if scaled["spec"]["scaleTargetRef"]["name"] == name:
            return int(scaled["spec"]["minReplicaCount"])
    return int(deployment["spec"]["replicas"])


def _ingress_idle_timeout_seconds() -> int:
    values = load_yaml(REPO / "k8s" / "addons" / "traefik.yaml")
    for argument in values["additionalArguments"]:
        match = re.fullmatch(
            r"--serversTransport\.forwardingTimeouts\.idleConnTimeout=(\d+)s", argument
        )
        if match:
            return int(match.group(1))
    msg = "k8s/addons/traefik.yaml sets no upstream idle timeout"
    raise AssertionError(msg)


@pytest.mark.parametrize("value_set", SETS)
def test_every_container_is_hardened_and_sized(value_set: str) -> None:
    openshift = value_sets()[value_set].get("openshift", False)
    for workload in render_set(value_set).workloads():
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if tier(workload) not in {"operator", "uninstall"}:  # both talk to the Kubernetes API
            assert spec["automountServiceAccountToken"] is False, name
        mounts_by_volume = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert security["runAsNonRoot"] is True, name
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
            if not openshift:
                assert security["runAsUser"] >= 10000, name
            if not value_set.startswith("skaffold-dev"):
                assert security["readOnlyRootFilesystem"] is True, name
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{name}: {bound}"
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == TMP]
            assert tmp, f"{name}: no writable /tmp"
            assert "emptyDir" in mounts_by_volume[tmp[0]["name"]], name


@pytest.mark.parametrize("value_set", SETS)
def test_every_serving_pod_has_probes_a_drain_and_a_spread(value_set: str) -> None:
    values = value_sets()[value_set]
    spread = values.get("defaults", {}).get("topologySpread", {}).get("enabled", True)
    for deployment in _serving(render_set(value_set)):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        port_names = {port["name"] for port in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in port_names, f"{name}: {probe}"
        # Liveness never looks at dependencies; an API's readiness does.
        assert container["livenessProbe"]["httpGet"]["path"] in {"/livez", "/healthz"}, name
        if tier(deployment) == "api":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop > 0, name
        grace = spec["terminationGracePeriodSeconds"]
        env = env_of(container)
        if "GRACEFUL_SHUTDOWN_SECONDS" in env:
            # uvicorn must finish draining before the kubelet's SIGKILL.
            assert grace > pre_stop + int(env["GRACEFUL_SHUTDOWN_SECONDS"]["value"]), name
        else:
            assert grace > pre_stop, name
        if spread and tier(deployment) != "operator":
            keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
            assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
            for constraint in spec["topologySpreadConstraints"]:
                selector = constraint["labelSelector"]["matchLabels"]
                assert selector.items() <= pod_labels(deployment).items(), name
        # One uvicorn process per pod: scale with replicas, metrics stay per process.
        assert "--workers" not in container.get("args", []), name


@pytest.mark.parametrize("value_set", SETS)
def test_every_service_gets_the_production_settings(value_set: str) -> None:
    idle_timeout = _ingress_idle_timeout_seconds()
    rendered = render_set(value_set)
    for workload in rendered.workloads():
        if tier(workload) not in {"api", "worker", "migrations"}:
            continue
        name = workload["metadata"]["name"]
        (container,) = pod_spec(workload)["containers"]
        env = env_of(container)
        assert env["ENVIRONMENT"]["value"] == "production", name
        assert env["HOST"]["value"] == ALL_INTERFACES, name
        assert env["RUN_MIGRATIONS_ON_START"]["value"] == "false", name
        assert int(env["KEEPALIVE_SECONDS"]["value"]) > idle_timeout, name
        assert env["API_KEYS_FILE"]["value"].startswith("/etc/regatta/api-keys/"), name
        for variable in ("DATABASE_URL", "REDIS_URL"):
            item = env[variable]
            # From a Secret, directly or through $(VARIABLES) that are: never in plain text.
            if "valueFrom" in item:
                assert "secretKeyRef" in item["valueFrom"], f"{name}: {variable}"
            else:
                for ref in re.findall(r"\$\((\w+)\)", item["value"]):
                    assert "secretKeyRef" in env[ref]["valueFrom"], f"{name}: {variable}"
                assert re.search(r"://[^@]*\$\(\w+\)@", item["value"]), f"{name}: {variable}"
        if tier(workload) != "migrations":
            secret_volumes = {v["name"] for v in pod_spec(workload)["volumes"] if "secret" in v}
            mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert any(
                env["API_KEYS_FILE"]["value"].startswith(mounted[v]) for v in secret_volumes
            ), f"{name}: API_KEYS_FILE is not on a mounted Secret"


@pytest.mark.parametrize("value_set", SETS)
def test_every_serving_deployment_is_autoscaled_and_protected(value_set: str) -> None:
    rendered = render_set(value_set)
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in rendered.kind("HorizontalPodAutoscaler")
    }
    keda = {s["spec"]["scaleTargetRef"]["name"] for s in rendered.kind("ScaledObject")}
    budgets = rendered.kind("PodDisruptionBudget")
    for deployment in _serving(rendered):
        name = deployment["metadata"]["name"]
        if tier(deployment) == "operator":
            assert deployment["spec"]["replicas"] == 1, name
            assert name not in hpas, name
            continue
        if name in hpas:
            hpa = hpas[name]
            assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the count"
            metrics = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
            # CPU only: a Python process rarely gives memory back, so a memory target would
            # add pods after a burst and never remove them.
            assert metrics == {"cpu"}, name
            assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0, name
            assert name not in keda, f"{name}: an HPA and a ScaledObject would fight"
        elif name in keda:
            assert "replicas" not in deployment["spec"], name
        else:
            assert (
                value_sets()[value_set]
                .get("defaults", {})
                .get("autoscaling", {})
                .get("enabled", True)
                is False
            ), f"{name}: autoscaling is on by default"
        matching = [
            b
            for b in budgets
            if b["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
        ]
        if _min_replicas(rendered, deployment) > 1:
            assert len(matching) == 1, f"{name}: one PodDisruptionBudget"
        else:
            assert not matching, f"{name}: a budget on one replica blocks every drain"


@pytest.mark.parametrize("value_set", SETS)
def test_routes_carry_exactly_the_service_prefixes(value_set: str) -> None:
    rendered = render_set(value_set)
    expected = {f"/{name}" for name in _enabled_apis(value_set)}
    services = {s["metadata"]["name"]: s for s in rendered.kind("Service")}
    routed: list[tuple[str, str, int | str]] = []
    for ingress in rendered.kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["pathType"] == "Prefix"
                backend = path["backend"]["service"]
                routed.append((path["path"], backend["name"], backend["port"]["name"]))
    for route in rendered.kind("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            (match,) = rule["matches"]
            assert match["path"]["type"] == "PathPrefix"
            (backend,) = rule["backendRefs"]
            routed.append((match["path"]["value"], backend["name"], backend["port"]))
    assert routed, "nothing routes to the services"
    assert {path for path, _, _ in routed} == expected
    for path, service, port in routed:
        # /metrics (and the health endpoints) are never reachable from outside.
        assert path not in {"/", "/metrics", "/livez", "/readyz"}
        ports = services[service]["spec"]["ports"]
        assert any(port in (p["name"], p["port"]) for p in ports), f"{path} -> {service}:{port}"
        assert services[service]["metadata"]["labels"]["regatta.dev/tier"] == "api"


@pytest.mark.parametrize("value_set", SETS)
def test_migrations_run_once_per_service_as_hook_jobs(value_set: str) -> None:
    rendered = render_set(value_set)
    jobs = {
        j["metadata"]["name"]: j
        for j in rendered.kind("Job")
        if j["metadata"]["name"].endswith("-migrate")
    }
    assert set(jobs) == {f"regatta-{name}-migrate" for name in _enabled_apis(value_set)}
    for name, job in jobs.items():
        hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
        assert "pre-upgrade" in hooks, name
        assert hooks & {"pre-install", "post-install"}, name
        (container,) = pod_spec(job)["containers"]
        service = name.removeprefix("regatta-").removesuffix("-migrate")
        assert container["args"] == ["python", "-m", f"regatta.{service}.migrate"]
        assert pod_spec(job)["restartPolicy"] == "Never"
    for deployment in _serving(rendered):
        env = env_of(pod_spec(deployment)["containers"][0])
        if "RUN_MIGRATIONS_ON_START" in env:
            assert env["RUN_MIGRATIONS_ON_START"]["value"] == "false"


def _selects(policy: Manifest, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(
        labels.get(expression["key"]) in expression["values"]
        for expression in selector.get("matchExpressions", [])
    )


def _pod_peers(policy: Manifest) -> list[dict[str, str]]:
    """The pod labels a policy lets in from the release's own namespace."""
    return [
        peer["podSelector"]["matchLabels"]
        for rule in policy["spec"].get("ingress", [])
        for peer in rule["from"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]


@pytest.mark.parametrize("value_set", SETS)
def test_network_policies_fence_the_data_and_the_apis(value_set: str) -> None:
    rendered = render_set(value_set)
    policies = rendered.kind("NetworkPolicy")
    assert policies
    for workload in rendered.workloads():
        assert any(_selects(p, pod_labels(workload)) for p in policies), workload["metadata"]
    data_clients = {"regatta.dev/database-client", "regatta.dev/redis-client", "cnpg.io/cluster"}
    for policy in policies:
        if policy["metadata"]["name"] in {"regatta-postgresql", "regatta-redis", "regatta-pg"}:
            for labels in _pod_peers(policy):
                assert labels.keys() & data_clients, policy["metadata"]["name"]
    # Clients of the data are exactly the services, their worker and their migrations (and
    # the operator, which creates each ApiService's database, and the Postgres exporter).
    for workload in rendered.workloads():
        is_client = pod_labels(workload).get("regatta.dev/database-client") == "true"
        postgres_exporter = workload["metadata"]["name"].endswith("-postgres-exporter")
        assert is_client == (
            tier(workload) in {"api", "worker", "migrations", "operator"} or postgres_exporter
        )
    api_policy = rendered.get("NetworkPolicy", "regatta-api")
    assert api_policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in api_policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == ["http"]


def _admits(policy: Manifest, peers: list[dict[str, Any]], port: str) -> bool:
    return any(
        rule.get("from") == peers and port in [p["port"] for p in rule.get("ports", [])]
        for rule in policy["spec"].get("ingress", [])
    )


@pytest.mark.parametrize("value_set", SETS)
def test_network_policies_let_prometheus_scrape_every_pod_monitor(value_set: str) -> None:
    """A PodMonitor's port is open to networkPolicy.metricsFrom in every policy fencing the
    pods it scrapes: the exporters, the worker, CloudNativePG's instances."""
    rendered = render_set(value_set)
    peers = value_sets()[value_set].get("networkPolicy", {}).get("metricsFrom") or [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    pods = [pod_labels(workload) for workload in rendered.workloads()]
    # CloudNativePG makes the instances' pods; they carry their Cluster's name.
    pods += [{"cnpg.io/cluster": c["metadata"]["name"]} for c in rendered.kind("Cluster")]
    policies = rendered.kind("NetworkPolicy")
    scraped = 0
    for monitor in rendered.kind("PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        for labels in pods:
            if not selector.items() <= labels.items():
                continue
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                for policy in policies:
                    if _selects(policy, labels):
                        scraped += 1
                        assert _admits(policy, peers, endpoint["port"]), (
                            monitor["metadata"]["name"],
                            policy["metadata"]["name"],
                        )
    if rendered.kind("PodMonitor") and policies:
        assert scraped


@pytest.mark.parametrize("value_set", SETS)
def test_monitoring_objects_dashboards_and_rules(value_set: str) -> None:
    rendered = render_set(value_set)
    values = value_sets()[value_set].get("metrics", {})
    monitors = rendered.kind("ServiceMonitor")
    if values.get("serviceMonitor", {}).get("force"):
        (monitor,) = monitors
        assert monitor["spec"]["selector"]["matchLabels"]["regatta.dev/tier"] == "api"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        extra = values["serviceMonitor"].get("additionalLabels", {})
        assert extra.items() <= monitor["metadata"]["labels"].items()
    else:
        # No Prometheus Operator in an offline render, so nothing that would fail to apply.
        assert not monitors
    rules = rendered.kind("PrometheusRule")
    if values.get("prometheusRule", {}).get("force"):
        (rule,) = rules
        exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        assert any("alert" in r for g in rule["spec"]["groups"] for r in g["rules"])
        assert any("http_requests_total" in e for e in exprs)
        assert any("http_request_duration_seconds_bucket" in e for e in exprs)
    dashboards = [
        c for c in rendered.kind("ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]
    ]
    if values.get("dashboards", {}).get("enabled", True):
        assert dashboards
        for config_map in dashboards:
            assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
            for text in config_map["data"].values():
                dashboard = json.loads(text)
                assert dashboard["panels"]
                # Every query is checked against a real Prometheus in tests/observability.
                exprs = [
                    t.get("expr", "") for p in dashboard["panels"] for t in p.get("targets", [])
                ]
                assert any("regatta_" in e or "http_request" in e for e in exprs)
    else:
        assert not dashboards


def test_helm_test_calls_every_service() -> None:
    rendered = render_set("production")
    tests = [
        p for p in rendered.kind("Pod") if p["metadata"]["annotations"]["helm.sh/hook"] == "test"
    ]
    called = {env_of(p["spec"]["containers"][0])["COLLECTION"]["value"] for p in tests}
    assert called == {"/items", "/heroes", "/notifications"}


def test_notes_tell_how_to_reach_the_platform() -> None:
    notes = render_set("production").notes
    assert "https://api.example.com/items" in notes
    assert "port-forward svc/regatta-heroes" in notes
    assert "get secret" not in notes or "regatta-api-keys" in notes
    assert "helm test regatta" in render_set("default").notes


def test_the_worker_scales_on_stream_lag_with_keda() -> None:
    rendered = render_set("production")
    scaled = rendered.get("ScaledObject", "regatta-notifications-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == "regatta:events"
    assert trigger["metadata"]["address"] == "regatta-redis:6379"
    worker = rendered.get("Deployment", "regatta-notifications-worker")
    (container,) = pod_spec(worker)["containers"]
    assert container["args"] == ["python", "-m", "regatta.notifications.worker"]
    assert container["image"].startswith("ghcr.io/regatta/regatta-notifications")
    assert "regatta-notifications-worker" not in {
        h["spec"]["scaleTargetRef"]["name"] for h in rendered.kind("HorizontalPodAutoscaler")
    }
    monitor = rendered.get("PodMonitor", "regatta-notifications-worker")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "health"


def test_the_operator_has_least_privilege_rbac() -> None:
    rendered = render_set("production")
    # kopf's own rules and the application's, each bound to the operator's ServiceAccount.
    roles = {
        role["metadata"]["name"]: role
        for role in rendered.kind("Role")
        if "helm.sh/hook" not in role["metadata"].get("annotations", {})  # the uninstall hook's
    }
    assert set(roles) == {"regatta-operator", "regatta-operator-kopf"}
    bound = {b["roleRef"]["name"] for b in rendered.kind("RoleBinding")}
    assert set(roles) <= bound
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"]
            assert "*" not in rule["resources"]
            # Secrets (each ApiService's credentials) are written by name, never listed.
            if "secrets" in rule["resources"]:
                assert not {"list", "watch"} & set(rule["verbs"])
    operator = rendered.get("Deployment", "regatta-operator")
    assert operator["spec"]["strategy"]["type"] == "Recreate"
    args = pod_spec(operator)["containers"][0]["args"]
    assert args[:2] == ["kopf", "run"]
    assert "-m" in args
    assert "--namespace=regatta" in args


def test_per_service_overrides_image_env_pull_secrets_and_false() -> None:
    rendered = render(
        {
            "imagePullSecrets": ["global"],
            "defaults": {"image": {"tag": "1.2.3"}},
            "services": {
                "items": {
                    "image": {"digest": "sha256:" + "a" * 64},
                    "imagePullSecrets": ["items-only"],
                    "env": [{"name": "EXTRA", "value": "1"}],
                    # A false override must win over a true default (sprig's merge drops it).
                    "autoscaling": {"enabled": False},
                    "replicas": 4,
                },
            },
        }
    )
    items = rendered.get("Deployment", "regatta-items")
    heroes = rendered.get("Deployment", "regatta-heroes")
    spec = pod_spec(items)
    assert spec["containers"][0]["image"] == "ghcr.io/regatta/regatta-items@sha256:" + "a" * 64
    assert pod_spec(heroes)["containers"][0]["image"] == "ghcr.io/regatta/regatta-heroes:1.2.3"
    assert [s["name"] for s in spec["imagePullSecrets"]] == ["global", "items-only"]
    assert [s["name"] for s in pod_spec(heroes)["imagePullSecrets"]] == ["global"]
    assert env_of(spec["containers"][0])["EXTRA"]["value"] == "1"
    assert "EXTRA" not in env_of(pod_spec(heroes)["containers"][0])
    assert items["spec"]["replicas"] == 4
    targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in rendered.kind("HorizontalPodAutoscaler")
    }
    assert "regatta-items" not in targets
    assert "regatta-heroes" in targets


def test_openshift_leaves_the_uids_to_the_platform() -> None:
    rendered = render({"openshift": True})
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        contexts = [spec["securityContext"]] + [c["securityContext"] for c in spec["containers"]]
        for context in contexts:
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & context.keys()
            assert context["runAsNonRoot"] is True


def test_a_grace_period_shorter_than_the_drain_is_refused() -> None:
    with pytest.raises(Exception, match="terminationGracePeriodSeconds"):
        render({"defaults": {"terminationGracePeriodSeconds": 25}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"database": {"mode": "external"}}, "existingSecret"),
        ({"redis": {"mode": "external"}}, "existingSecret"),
        ({"ingress": {"tls": {"enabled": True}}}, "ingress.host"),
        (
            {
                "services": {"notifications": {"enabled": True}},
                "worker": {"keda": {"enabled": True}},
                "redis": {"mode": "external", "external": {"existingSecret": "r"}},
            },
            "redisAddress",
        ),
    ],
    ids=["database", "redis", "tls", "keda"],
)
def test_settings_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        render(values)


def test_generated_credentials_are_random_kept_and_never_in_values() -> None:
    first, second = render(), render()

    def secrets(rendered: Rendered) -> dict[str, dict[str, str]]:
        return {s["metadata"]["name"]: s["data"] for s in rendered.kind("Secret")}

    assert set(secrets(first)) == {
        "regatta-api-keys",
        "regatta-notifications",
        "regatta-postgresql",
        "regatta-redis",
    }
    for name, data in secrets(first).items():
        # Offline, lookup finds nothing: a fresh value each time, never one from values.
        assert data != secrets(second)[name], name
        secret = first.get("Secret", name)
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    template = (REPO / "charts/regatta/templates/_helpers.tpl").read_text(encoding="utf-8")
    assert 'lookup "v1" "Secret"' in template


@pytest.mark.parametrize("value_set", SETS)
def test_notifications_pods_get_their_signing_secret_and_port(value_set: str) -> None:
    rendered = render_set(value_set)
    for workload in rendered.workloads():
        name = workload["metadata"]["name"]
        if not name.startswith("regatta-notifications") or tier(workload) == "test":
            continue
        (container,) = pod_spec(workload)["containers"]
        env = env_of(container)
        assert "secretKeyRef" in env["WEBHOOK_SIGNING_SECRET"]["valueFrom"], name
        if tier(workload) == "worker":
            (port,) = container["ports"]
            assert int(env["WORKER_PORT"]["value"]) == port["containerPort"], name


RESERVED_CONNECTIONS = 10  # migrations, the operator, a superuser's psql (values.yaml)


def _max_connections(rendered: Rendered, values: dict[str, Any]) -> int:
    """What the rendered Postgres allows (or, for an external one, what values say it does)."""
    for cluster in rendered.kind("Cluster"):
        return int(cluster["spec"]["postgresql"]["parameters"]["max_connections"])
    for statefulset in rendered.kind("StatefulSet"):
        if statefulset["metadata"]["name"] == "regatta-postgresql":
            args = pod_spec(statefulset)["containers"][0]["args"]
            (setting,) = [a for a in args if a.startswith("max_connections=")]
            return int(setting.partition("=")[2])
    return int(values.get("database", {}).get("maxConnections", 300))


def _worst_case_connections(rendered: Rendered) -> int:
    """Every database client pod at its scaler's maximum, plus a 25 % surge, times its pool."""
    most: dict[str, int] = {}
    for deployment in rendered.kind("Deployment"):
        name = deployment["metadata"]["name"]
        env = env_of(pod_spec(deployment)["containers"][0])
        if "DB_POOL_SIZE" in env and tier(deployment) in {"api", "worker"}:
            most[name] = deployment["spec"].get("replicas", 0)
    for hpa in rendered.kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] in most:
            most[hpa["spec"]["scaleTargetRef"]["name"]] = hpa["spec"]["maxReplicas"]
    for scaled in rendered.kind("ScaledObject"):
        most[scaled["spec"]["scaleTargetRef"]["name"]] = scaled["spec"]["maxReplicaCount"]
    total = 0
    for name, replicas in most.items():
        env = env_of(pod_spec(rendered.get("Deployment", name))["containers"][0])
        pool = int(env["DB_POOL_SIZE"]["value"]) + int(env["DB_MAX_OVERFLOW"]["value"])
        total += (replicas + -(-replicas // 4)) * pool
    return total


@pytest.mark.parametrize("value_set", SETS)
def test_every_pool_at_its_largest_fits_in_the_database(value_set: str) -> None:
    values = value_sets()[value_set]
    rendered = render_set(value_set)
    assert _worst_case_connections(rendered) > 0
    assert (
        _worst_case_connections(rendered)
        <= _max_connections(rendered, values) - RESERVED_CONNECTIONS
    )


def test_the_default_install_counts_every_pod_the_autoscalers_may_add() -> None:
    # items, heroes, notifications and the worker: 10 replicas at most, 13 with the surge, 5
    # connections each: 260 of the 290 that max_connections 300 leaves.
    rendered = render()
    assert _worst_case_connections(rendered) == 260
    assert _max_connections(rendered, {}) == 300
    render({"database": {"maxConnections": 270}})
    with pytest.raises(Exception, match=r"need up to 260 connections \(52 pods"):
        render({"database": {"maxConnections": 269}})
    with pytest.raises(Exception, match=r"lower config\.dbPoolSize"):
        render({"config": {"dbPoolSize": 6}})
    with pytest.raises(Exception, match=r"database\.maxConnections 300"):
        render({"config": {"dbMaxOverflow": 1}})
    # Fewer pods, or a larger server, make room again.
    render({"config": {"dbPoolSize": 6}, "services": {"heroes": {"enabled": False}}})
    bigger = render({"config": {"dbPoolSize": 6}, "database": {"maxConnections": 400}})
    assert _worst_case_connections(bigger) == 312
    assert _max_connections(bigger, {}) == 400
    with pytest.raises(Exception, match="worker 40"):
        render({"worker": {"autoscaling": {"maxReplicas": 40}}})
    with pytest.raises(Exception, match="worker 60"):
        render({"worker": {"keda": {"enabled": True, "maxReplicaCount": 60}}})
