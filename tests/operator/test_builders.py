"""Every build_*() function, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from regatta.operator.builders import (
    Target,
    build_children,
    build_deployment,
    build_env,
    build_hpa,
    build_http_route,
    build_ingress,
    build_network_policy,
    build_pdb,
    build_secret,
    build_service,
    build_service_monitor,
    image_version,
    service_url,
)
from regatta.operator.settings import CONFIG_VARIABLE, PlatformSettings, load_settings
from regatta.operator.spec import InvalidSpecError, parse_spec
from tests.operator.support import chart_environment, platform_settings

SELECTOR = {
    "app.kubernetes.io/name": "regatta",
    "app.kubernetes.io/instance": "regatta",
    "app.kubernetes.io/component": "orders",
}


def target(**spec: Any) -> Target:
    body = {"image": "ghcr.io/example/orders:1.4.2", "pathPrefix": "/orders", **spec}
    return Target(name="orders", namespace="shop", spec=parse_spec(body))


def test_the_deployment_has_the_chart_probes_hardening_and_labels(
    platform: PlatformSettings,
) -> None:
    deployment = build_deployment(target(replicas=3), platform)
    assert deployment["metadata"]["namespace"] == "shop"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["regatta.dev/tier"] == "api"
    assert "regatta.dev/database-client" not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/version"] == "1.4.2"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/example/orders:1.4.2"
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] == 60
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["resources"] == platform.defaults.resources
    assert [key["topologyKey"] for key in pod["spec"]["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]


def test_autoscaling_leaves_the_replica_count_to_the_hpa(platform: PlatformSettings) -> None:
    spec = target(autoscaling={"minReplicas": 3, "maxReplicas": 9})
    assert "replicas" not in build_deployment(spec, platform)["spec"]
    hpa = build_hpa(spec, platform)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "orders",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    cpu = hpa["spec"]["metrics"][0]["resource"]
    assert cpu == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert build_hpa(target(replicas=2), platform) is None


def test_a_pdb_only_with_more_than_one_replica(platform: PlatformSettings) -> None:
    assert build_pdb(target(replicas=1), platform) is None
    pdb = build_pdb(target(replicas=2), platform)
    assert pdb is not None
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}
    assert build_pdb(target(autoscaling={"minReplicas": 2}), platform) is not None
    assert build_pdb(target(autoscaling={"minReplicas": 1, "maxReplicas": 4}), platform) is None


def test_the_service_targets_the_named_port_without_the_chart_monitor_label(
    platform: PlatformSettings,
) -> None:
    service = build_service(target(port=9000), platform)
    assert service["spec"]["selector"] == SELECTOR
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    # The chart's ServiceMonitor selects tier=api Services; this one has its own monitor.
    assert "regatta.dev/tier" not in service["metadata"]["labels"]


def test_database_and_redis_come_from_secrets_with_a_prefix_of_their_own(
    platform: PlatformSettings,
) -> None:
    env = {item["name"]: item for item in build_env(target(database=True, redis=True), platform)}
    assert env["DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "orders-database", "key": "DATABASE_URL"}
    }
    assert env["REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "orders-redis", "key": "REDIS_URL"}
    }
    assert env["REDIS_KEY_PREFIX"]["value"] == "regatta:shop.orders:"
    assert env["PORT"]["value"] == "8000"
    # Its pool is sized like the chart's services': it shares their Postgres.
    assert env["DB_POOL_SIZE"]["value"] == "5"
    assert env["DB_MAX_OVERFLOW"]["value"] == "0"
    labels = build_deployment(target(database=True, redis=True), platform)["spec"]["template"][
        "metadata"
    ]["labels"]
    assert labels["regatta.dev/database-client"] == "true"
    assert labels["regatta.dev/redis-client"] == "true"
    plain = {
        item["name"] for item in build_env(target(env=[{"name": "A", "value": "1"}]), platform)
    }
    assert "DATABASE_URL" not in plain
    assert "DB_POOL_SIZE" not in plain
    assert "REDIS_URL" not in plain
    assert "A" in plain


def test_the_network_policy_lets_in_the_ingress_controller_and_prometheus(
    platform: PlatformSettings,
) -> None:
    policy = build_network_policy(target(), platform)
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": SELECTOR}
    peers = [rule["from"] for rule in policy["spec"]["ingress"]]
    assert peers == [platform.network_policy.ingress_from, platform.network_policy.metrics_from]
    off = platform.model_copy(
        update={"network_policy": platform.network_policy.model_copy(update={"enabled": False})}
    )
    assert build_network_policy(target(), off) is None


def test_the_route_follows_the_chart_ingress_or_gateway(platform: PlatformSettings) -> None:
    ingress = build_ingress(target(), platform)
    assert ingress is not None
    assert ingress["spec"]["ingressClassName"] == "traefik"
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/orders"
    assert path["backend"] == {"service": {"name": "orders", "port": {"name": "http"}}}
    assert build_http_route(target(), platform) is None

    gateway = platform_settings()
    gateway = gateway.model_copy(
        update={
            "ingress": gateway.ingress.model_copy(update={"enabled": False}),
            "http_route": gateway.http_route.model_copy(update={"enabled": True}),
        }
    )
    assert build_ingress(target(), gateway) is None
    route = build_http_route(target(), gateway)
    assert route is not None
    assert route["spec"]["parentRefs"] == [
        {"name": "traefik-gateway", "namespace": "traefik", "sectionName": "web"}
    ]
    assert route["spec"]["rules"][0]["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/orders"}}
    ]


def test_a_service_monitor_only_where_prometheus_operator_runs(platform: PlatformSettings) -> None:
    monitor = build_service_monitor(target(), platform)
    assert monitor is not None
    assert monitor["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert build_service_monitor(target(), platform_settings(monitoring=False)) is None


def test_children_switched_off_are_listed_for_deletion(platform: PlatformSettings) -> None:
    present, absent = build_children(target(replicas=1), platform)
    assert {m["kind"] for m in present} == {
        "Deployment",
        "Service",
        "NetworkPolicy",
        "Ingress",
        "ServiceMonitor",
    }
    assert {m["kind"] for m in absent} == {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "HTTPRoute",
    }
    for manifest in present + absent:
        assert manifest["metadata"]["name"] == "orders"
        assert manifest["metadata"]["namespace"] == "shop"


def test_a_secret_and_the_url_of_the_service(platform: PlatformSettings) -> None:
    secret = build_secret(target(), platform, suffix="-redis", data={"REDIS_URL": "redis://x"})
    assert secret["metadata"]["name"] == "orders-redis"
    assert secret["stringData"] == {"REDIS_URL": "redis://x"}
    assert service_url(target(), platform) == "http://orders.shop.svc/orders"
    hosted = platform.model_copy(
        update={
            "ingress": platform.ingress.model_copy(
                update={
                    "host": "api.example.com",
                    "tls": platform.ingress.tls.model_copy(update={"enabled": True}),
                }
            )
        }
    )
    assert service_url(target(), hosted) == "https://api.example.com/orders"


def test_openshift_leaves_the_uids_to_the_platform(platform: PlatformSettings) -> None:
    openshift = platform.model_copy(update={"openshift": True})
    pod = build_deployment(target(), openshift)["spec"]["template"]["spec"]
    for context in (pod["securityContext"], pod["containers"][0]["securityContext"]):
        assert "runAsUser" not in context
        assert context["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("ghcr.io/example/orders:1.4.2", "1.4.2"),
        ("localhost:5000/orders", None),
        ("orders@sha256:abc", None),
        ("localhost:5000/orders:2.0@sha256:abc", "2.0"),
    ],
)
def test_the_version_label_is_the_image_tag(image: str, version: str | None) -> None:
    assert image_version(image) == version
    labels = build_deployment(target(image=image), platform_settings())["metadata"]["labels"]
    assert labels.get("app.kubernetes.io/version") == version
    chosen = build_deployment(target(image=image, version="2026.1"), platform_settings())
    assert chosen["metadata"]["labels"]["app.kubernetes.io/version"] == "2026.1"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replicas": 2, "autoscaling": {}}, "either replicas or autoscaling"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "exceeds"),
        ({"env": [{"name": "DATABASE_URL", "value": "x"}]}, "set by the operator"),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "more than once"),
        ({"env": [{"name": "1A", "value": "1"}]}, "not a valid variable name"),
        ({"pathPrefix": "orders"}, "pathPrefix"),
        ({"port": 0}, "port"),
    ],
)
def test_specs_the_schema_lets_through_are_explained(spec: dict[str, Any], message: str) -> None:
    body = {"image": "ghcr.io/example/orders:1.4.2", "pathPrefix": "/orders", **spec}
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec(body)


def test_settings_come_from_the_chart_environment() -> None:
    with pytest.raises(RuntimeError, match=CONFIG_VARIABLE):
        load_settings({})
    config = chart_environment()[CONFIG_VARIABLE]
    platform = load_settings({CONFIG_VARIABLE: config, "DATABASE_URL": "postgresql://app@db/x"})
    assert platform.database_admin_url == "postgresql://app@db/x"
    assert platform.instance == "regatta"
    assert platform.defaults.probes.readiness.path == "/readyz"
    assert "regatta-items" in platform.reserved_names
    dedicated = load_settings(
        {
            CONFIG_VARIABLE: config,
            "DATABASE_URL": "postgresql://app@db/x",
            "DATABASE_ADMIN_URL": "postgresql://admin@db/postgres",
        }
    )
    assert dedicated.database_admin_url == "postgresql://admin@db/postgres"
