"""Pure functions from an ApiService to the objects it consists of, with the chart's conventions.

Nothing here talks to Kubernetes: every `build_*()` takes the resource's identity, its parsed
spec and the platform settings, and returns a manifest (a plain dict) ready to be adopted and
applied. The chart's services (charts/regatta/templates/services.yaml and _helpers.tpl) are the
reference; tests/operator/test_conformance.py holds the two together.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from regatta.operator.settings import PlatformSettings
from regatta.operator.spec import ApiServiceSpec

Manifest = dict[str, Any]

MANAGER = "regatta-operator"
DATABASE_CONNECTION_SUFFIX = "-database"
REDIS_CONNECTION_SUFFIX = "-redis"
_OPENSHIFT_ASSIGNED = ("runAsUser", "runAsGroup", "fsGroup")


@dataclass(frozen=True)
class Target:
    """The ApiService being built: its identity and its parsed spec."""

    name: str
    namespace: str
    spec: ApiServiceSpec


def selector_labels(target: Target, settings: PlatformSettings) -> dict[str, str]:
    """The labels a selector matches: the platform's name and instance, the service's name."""
    return {
        "app.kubernetes.io/name": settings.name,
        "app.kubernetes.io/instance": settings.instance,
        "app.kubernetes.io/component": target.name,
    }


def image_version(image: str) -> str | None:
    """The tag of an image reference; None for an image pinned by digest alone."""
    reference = image.split("@", 1)[0]
    last = reference.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


def _version_label(target: Target) -> dict[str, str]:
    version = target.spec.version or image_version(target.spec.image)
    return {"app.kubernetes.io/version": version[:63]} if version else {}


def object_labels(target: Target, settings: PlatformSettings) -> dict[str, str]:
    """The labels of every object built for an ApiService."""
    return {
        **selector_labels(target, settings),
        "app.kubernetes.io/part-of": "regatta",
        **_version_label(target),
        "app.kubernetes.io/managed-by": MANAGER,
    }


def pod_labels(target: Target, settings: PlatformSettings) -> dict[str, str]:
    """The labels of the pods: the chart's, so its NetworkPolicies apply to them as well."""
    labels = {
        **selector_labels(target, settings),
        "app.kubernetes.io/part-of": "regatta",
        **_version_label(target),
        "regatta.dev/tier": "api",
    }
    if target.spec.database:
        labels["regatta.dev/database-client"] = "true"
    if target.spec.redis:
        labels["regatta.dev/redis-client"] = "true"
    return labels


def _metadata(target: Target, settings: PlatformSettings, **extra: Any) -> Manifest:
    return {
        "name": target.name,
        "namespace": target.namespace,
        "labels": object_labels(target, settings),
        **extra,
    }


def _security_context(context: dict[str, Any], settings: PlatformSettings) -> dict[str, Any]:
    result = copy.deepcopy(context)
    if settings.openshift:
        for key in _OPENSHIFT_ASSIGNED:
            result.pop(key, None)
    return result


def _probe(path: str, period: int, timeout: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _secret_env(variable: str, secret: str) -> Manifest:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": variable}}}


def build_env(target: Target, settings: PlatformSettings) -> list[Manifest]:
    """The container's environment: the platform's service settings, then the spec's own."""
    config = settings.config
    env: list[Manifest] = [
        {"name": "ENVIRONMENT", "value": config.environment},
        {"name": "LOG_LEVEL", "value": config.log_level},
        {"name": "HOST", "value": "0.0.0.0"},  # noqa: S104 - a container listens on every interface
        {"name": "PORT", "value": str(target.spec.port)},
        {"name": "RUN_MIGRATIONS_ON_START", "value": "false"},
        {"name": "KEEPALIVE_SECONDS", "value": str(config.keepalive_seconds)},
        {"name": "GRACEFUL_SHUTDOWN_SECONDS", "value": str(config.graceful_shutdown_seconds)},
        {"name": "MAX_BODY_BYTES", "value": str(config.max_body_bytes)},
        {"name": "RATE_LIMIT_ENABLED", "value": str(config.rate_limit.enabled).lower()},
        {"name": "RATE_LIMIT_WINDOW_SECONDS", "value": str(config.rate_limit.window_seconds)},
        {"name": "RATE_LIMIT_READS", "value": str(config.rate_limit.reads)},
        {"name": "RATE_LIMIT_WRITES", "value": str(config.rate_limit.writes)},
        {"name": "TRUSTED_PROXIES", "value": ",".join(config.trusted_proxies)},
    ]
    if target.spec.database:
        env.append(_secret_env("DATABASE_URL", target.name + DATABASE_CONNECTION_SUFFIX))
        env.append({"name": "DB_POOL_SIZE", "value": str(config.db_pool_size)})
        env.append({"name": "DB_MAX_OVERFLOW", "value": str(config.db_max_overflow)})
    if target.spec.redis:
        env.append(_secret_env("REDIS_URL", target.name + REDIS_CONNECTION_SUFFIX))
        env.append({"name": "REDIS_KEY_PREFIX", "value": redis_key_prefix(target, settings)})
    env.extend({"name": item.name, "value": item.value} for item in target.spec.env)
    return env


def redis_key_prefix(target: Target, settings: PlatformSettings) -> str:
    """A Redis key prefix of the service's own, inside the platform's."""
    return f"{settings.config.redis_key_prefix}{target.namespace}.{target.name}:"


def build_deployment(target: Target, settings: PlatformSettings) -> Manifest:
    """The Deployment: the chart's pod template, probes, hardening and rollout strategy."""
    defaults = settings.defaults
    spec = target.spec
    probes = defaults.probes
    selector = selector_labels(target, settings)
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "securityContext": _security_context(defaults.pod_security_context, settings),
        "terminationGracePeriodSeconds": defaults.termination_grace_period_seconds,
        "containers": [
            {
                "name": target.name,
                "image": spec.image,
                "imagePullPolicy": defaults.image.pull_policy,
                "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
                "env": build_env(target, settings),
                "startupProbe": _probe(
                    probes.startup.path,
                    probes.startup.period_seconds,
                    probes.startup.timeout_seconds,
                    probes.startup.failure_threshold,
                ),
                "readinessProbe": _probe(
                    probes.readiness.path,
                    probes.readiness.period_seconds,
                    probes.readiness.timeout_seconds,
                    probes.readiness.failure_threshold,
                ),
                "livenessProbe": _probe(
                    probes.liveness.path,
                    probes.liveness.period_seconds,
                    probes.liveness.timeout_seconds,
                    probes.liveness.failure_threshold,
                ),
                "lifecycle": {"preStop": {"sleep": {"seconds": defaults.pre_stop_sleep_seconds}}},
                "resources": copy.deepcopy(
                    spec.resources if spec.resources is not None else defaults.resources
                ),
                "securityContext": _security_context(defaults.security_context, settings),
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": defaults.tmp_size_limit}}
        ],
    }
    pull_secrets = list(dict.fromkeys([*settings.image_pull_secrets, *defaults.image_pull_secrets]))
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    # Scheduling as for every workload of the chart.
    if defaults.priority_class_name:
        pod_spec["priorityClassName"] = defaults.priority_class_name
    if defaults.node_selector:
        pod_spec["nodeSelector"] = dict(defaults.node_selector)
    if defaults.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(defaults.tolerations)
    if defaults.affinity:
        pod_spec["affinity"] = copy.deepcopy(defaults.affinity)
    spread = defaults.topology_spread
    if spread.enabled:
        pod_spec["topologySpreadConstraints"] = [
            {
                "topologyKey": key,
                "maxSkew": spread.max_skew,
                "whenUnsatisfiable": spread.when_unsatisfiable,
                "labelSelector": {"matchLabels": dict(selector)},
                "matchLabelKeys": ["pod-template-hash"],
            }
            for key in spread.topology_keys
        ]
    template_metadata: Manifest = {
        "labels": {**pod_labels(target, settings), **defaults.pod_labels}
    }
    if defaults.pod_annotations:
        template_metadata["annotations"] = dict(defaults.pod_annotations)
    deployment_spec: Manifest = {
        "revisionHistoryLimit": 5,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
        },
        "selector": {"matchLabels": selector},
        "template": {"metadata": template_metadata, "spec": pod_spec},
    }
    # With an HPA the count is the HPA's: leaving `replicas` out keeps its choice on updates.
    if spec.autoscaling is None:
        deployment_spec["replicas"] = desired_replicas(target, settings)
    labels = {**object_labels(target, settings), "regatta.dev/tier": "api"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(target, settings) | {"labels": labels},
        "spec": deployment_spec,
    }


def desired_replicas(target: Target, settings: PlatformSettings) -> int:
    """The lowest number of replicas the service should run."""
    spec = target.spec
    if spec.autoscaling is not None:
        return spec.autoscaling.min_replicas
    return spec.replicas if spec.replicas is not None else settings.defaults.replicas


def build_service(target: Target, settings: PlatformSettings) -> Manifest:
    """The Service in front of the pods.

    It has no `regatta.dev/tier` label: the chart's ServiceMonitor selects on it, and the
    ApiService's own ServiceMonitor is the one that scrapes it.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(target, settings),
        "spec": {
            "type": settings.defaults.service.type,
            "selector": selector_labels(target, settings),
            "ports": [
                {
                    "name": "http",
                    "port": settings.defaults.service.port,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_hpa(target: Target, settings: PlatformSettings) -> Manifest | None:
    """The HorizontalPodAutoscaler, when the spec asks for autoscaling."""
    scaling = target.spec.autoscaling
    if scaling is None:
        return None
    defaults = settings.defaults.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(target, settings),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target.name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            # Memory only when asked for, as in the chart: a Python process rarely gives
            # memory back, so a memory target scales up and never down.
            "metrics": [
                _utilization("cpu", scaling.target_cpu_utilization_percentage),
                *(
                    [_utilization("memory", defaults.target_memory_utilization_percentage)]
                    if defaults.target_memory_utilization_percentage
                    else []
                ),
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": defaults.scale_down_stabilization_window_seconds,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                },
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30}],
                },
            },
        },
    }


def _utilization(resource: str, percent: int) -> Manifest:
    return {
        "type": "Resource",
        "resource": {
            "name": resource,
            "target": {"type": "Utilization", "averageUtilization": percent},
        },
    }


def build_pdb(target: Target, settings: PlatformSettings) -> Manifest | None:
    """A PodDisruptionBudget, only when more than one replica runs (as in the chart)."""
    if not settings.defaults.pdb.enabled or desired_replicas(target, settings) <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(target, settings),
        "spec": {
            "maxUnavailable": settings.defaults.pdb.max_unavailable,
            "selector": {"matchLabels": selector_labels(target, settings)},
        },
    }


def build_network_policy(target: Target, settings: PlatformSettings) -> Manifest | None:
    """Only the ingress controller and Prometheus reach the pods, as for the chart's APIs."""
    policy = settings.network_policy
    if not policy.enabled:
        return None
    rules: list[Manifest] = [
        {"from": copy.deepcopy(policy.ingress_from), "ports": [{"port": "http", "protocol": "TCP"}]}
    ]
    if policy.metrics_from:
        rules.append(
            {
                "from": copy.deepcopy(policy.metrics_from),
                "ports": [{"port": "http", "protocol": "TCP"}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(target, settings),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(target, settings)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def build_ingress(target: Target, settings: PlatformSettings) -> Manifest | None:
    """An Ingress for the path prefix, when the chart routes with Ingresses."""
    ingress = settings.ingress
    if not ingress.enabled:
        return None
    rule: Manifest = {
        "http": {
            "paths": [
                {
                    "path": target.spec.path_prefix,
                    "pathType": "Prefix",
                    "backend": {"service": {"name": target.name, "port": {"name": "http"}}},
                }
            ]
        }
    }
    if ingress.host:
        rule["host"] = ingress.host
    spec: Manifest = {"rules": [rule]}
    if ingress.class_name:
        spec["ingressClassName"] = ingress.class_name
    if ingress.tls.enabled and ingress.host:
        spec["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls.secret_name}]
    metadata = _metadata(target, settings)
    if ingress.annotations:
        metadata["annotations"] = dict(ingress.annotations)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


def build_http_route(target: Target, settings: PlatformSettings) -> Manifest | None:
    """A Gateway API HTTPRoute for the path prefix, when the chart routes with HTTPRoutes."""
    route = settings.http_route
    if not route.enabled:
        return None
    spec: Manifest = {
        "parentRefs": copy.deepcopy(route.parent_refs),
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": target.spec.path_prefix}}],
                "backendRefs": [{"name": target.name, "port": settings.defaults.service.port}],
            }
        ],
    }
    if route.hostnames:
        spec["hostnames"] = list(route.hostnames)
    metadata = _metadata(target, settings)
    if route.annotations:
        metadata["annotations"] = dict(route.annotations)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": spec,
    }


def build_service_monitor(target: Target, settings: PlatformSettings) -> Manifest | None:
    """A ServiceMonitor scraping /metrics, when the cluster runs the Prometheus Operator."""
    monitor = settings.service_monitor
    if not monitor.enabled:
        return None
    metadata = _metadata(target, settings)
    metadata["labels"] = {**metadata["labels"], **monitor.additional_labels}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(target, settings)},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "interval": monitor.interval,
                    "scrapeTimeout": monitor.scrape_timeout,
                }
            ],
        },
    }


def build_secret(
    target: Target, settings: PlatformSettings, *, suffix: str, data: dict[str, str]
) -> Manifest:
    """A Secret of the service's credentials (`stringData`, so the values stay readable here)."""
    metadata = _metadata(target, settings)
    metadata["name"] = target.name + suffix
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "stringData": dict(data),
    }


def build_secret_access(namespace: str, settings: PlatformSettings) -> Manifest | None:
    """The RoleBinding granting the operator Secret rights in one namespace (cluster-wide mode)."""
    access = settings.secret_access
    if not access.cluster_role or namespace == settings.namespace:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": access.cluster_role,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": settings.name,
                "app.kubernetes.io/instance": settings.instance,
                "app.kubernetes.io/managed-by": MANAGER,
            },
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": access.cluster_role,
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": access.service_account,
                "namespace": settings.namespace,
            }
        ],
    }


def service_url(target: Target, settings: PlatformSettings) -> str:
    """Where the service answers: through the ingress or gateway host, else inside the cluster."""
    prefix = target.spec.path_prefix
    if settings.ingress.enabled and settings.ingress.host:
        scheme = "https" if settings.ingress.tls.enabled else "http"
        return f"{scheme}://{settings.ingress.host}{prefix}"
    if settings.http_route.enabled and settings.http_route.hostnames:
        return f"http://{settings.http_route.hostnames[0]}{prefix}"
    port = settings.defaults.service.port
    authority = f"{target.name}.{target.namespace}.svc"
    if port != 80:  # noqa: PLR2004 - HTTP's own port needs no mention
        authority = f"{authority}:{port}"
    return f"http://{authority}{prefix}"


def build_children(
    target: Target, settings: PlatformSettings
) -> tuple[list[Manifest], list[Manifest]]:
    """What should exist and, by kind and name, what should not (switched off by the spec)."""
    built = {
        "Deployment": build_deployment(target, settings),
        "Service": build_service(target, settings),
        "HorizontalPodAutoscaler": build_hpa(target, settings),
        "PodDisruptionBudget": build_pdb(target, settings),
        "NetworkPolicy": build_network_policy(target, settings),
        "Ingress": build_ingress(target, settings),
        "HTTPRoute": build_http_route(target, settings),
        "ServiceMonitor": build_service_monitor(target, settings),
    }
    present = [manifest for manifest in built.values() if manifest is not None]
    absent = [
        stub(kind, target.name, target.namespace)
        for kind, manifest in built.items()
        if manifest is None
    ]
    return present, absent


API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "Secret": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Ingress": "networking.k8s.io/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}


def stub(kind: str, name: str, namespace: str) -> Manifest:
    """Just enough of an object to name it (to read or delete it)."""
    return {
        "apiVersion": API_VERSIONS[kind],
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
    }
