"""What the operator knows about the platform it extends, read once from its environment.

The chart renders the platform's conventions (its workload defaults, routing, network policy and
monitoring settings) into `REGATTA_OPERATOR_CONFIG` as JSON, so an ApiService gets exactly what
the chart gives the built-in services. Connection URLs come from Secrets, as for the services.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Camel(BaseModel):
    """A model read from the chart's camelCase values, ignoring keys the operator does not use."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class ProbeSettings(_Camel):
    """One HTTP probe (the chart's `defaults.probes.*`)."""

    path: str
    period_seconds: int = Field(alias="periodSeconds")
    timeout_seconds: int = Field(alias="timeoutSeconds")
    failure_threshold: int = Field(alias="failureThreshold")


class ProbesSettings(_Camel):
    """Startup, readiness and liveness probes."""

    startup: ProbeSettings
    readiness: ProbeSettings
    liveness: ProbeSettings


class TopologySpreadSettings(_Camel):
    """Soft spreading of replicas over zones and nodes."""

    enabled: bool
    max_skew: int = Field(alias="maxSkew")
    when_unsatisfiable: str = Field(alias="whenUnsatisfiable")
    topology_keys: list[str] = Field(alias="topologyKeys")


class AutoscalingDefaults(_Camel):
    """The chart's HPA settings an ApiService does not choose itself."""

    target_memory_utilization_percentage: int = Field(alias="targetMemoryUtilizationPercentage")
    scale_down_stabilization_window_seconds: int = Field(
        alias="scaleDownStabilizationWindowSeconds"
    )


class PdbSettings(_Camel):
    """PodDisruptionBudget settings."""

    enabled: bool
    max_unavailable: int | str = Field(alias="maxUnavailable")


class ServicePortSettings(_Camel):
    """The Kubernetes Service in front of the pods."""

    type: str
    port: int


class ImageDefaults(_Camel):
    """How images are pulled."""

    pull_policy: str = Field(default="IfNotPresent", alias="pullPolicy")


class WorkloadDefaults(_Camel):
    """The chart's `defaults`: every workload's conventions."""

    image: ImageDefaults = Field(default_factory=ImageDefaults)
    image_pull_secrets: list[str] = Field(default_factory=list, alias="imagePullSecrets")
    pod_annotations: dict[str, str] = Field(default_factory=dict, alias="podAnnotations")
    pod_labels: dict[str, str] = Field(default_factory=dict, alias="podLabels")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str = Field(default="", alias="priorityClassName")
    replicas: int
    resources: dict[str, Any]
    pod_security_context: dict[str, Any] = Field(alias="podSecurityContext")
    security_context: dict[str, Any] = Field(alias="securityContext")
    tmp_size_limit: str = Field(alias="tmpSizeLimit")
    topology_spread: TopologySpreadSettings = Field(alias="topologySpread")
    termination_grace_period_seconds: int = Field(alias="terminationGracePeriodSeconds")
    pre_stop_sleep_seconds: int = Field(alias="preStopSleepSeconds")
    probes: ProbesSettings
    autoscaling: AutoscalingDefaults
    pdb: PdbSettings
    service: ServicePortSettings


class IngressTlsSettings(_Camel):
    """TLS on the Ingress."""

    enabled: bool = False
    secret_name: str = Field(default="", alias="secretName")


class IngressSettings(_Camel):
    """The chart's `ingress`."""

    enabled: bool = False
    class_name: str = Field(default="", alias="className")
    host: str = ""
    annotations: dict[str, str] = Field(default_factory=dict)
    tls: IngressTlsSettings = Field(default_factory=IngressTlsSettings)


class HttpRouteSettings(_Camel):
    """The chart's `httpRoute`."""

    enabled: bool = False
    parent_refs: list[dict[str, Any]] = Field(default_factory=list, alias="parentRefs")
    hostnames: list[str] = Field(default_factory=list)
    annotations: dict[str, str] = Field(default_factory=dict)


class NetworkPolicySettings(_Camel):
    """The chart's `networkPolicy`."""

    enabled: bool = False
    ingress_from: list[dict[str, Any]] = Field(default_factory=list, alias="ingressFrom")
    metrics_from: list[dict[str, Any]] = Field(default_factory=list, alias="metricsFrom")


class ServiceMonitorSettings(_Camel):
    """The chart's `metrics.serviceMonitor`; `enabled` already accounts for the CRD's presence."""

    enabled: bool = False
    additional_labels: dict[str, str] = Field(default_factory=dict, alias="additionalLabels")
    interval: str = "30s"
    scrape_timeout: str = Field(default="10s", alias="scrapeTimeout")


class RateLimitConfig(_Camel):
    """The chart's `config.rateLimit`: the same limits for an ApiService as for the built-ins."""

    enabled: bool = False
    window_seconds: int = Field(default=60, alias="windowSeconds")
    reads: int = 1200
    writes: int = 120


class ServiceConfig(_Camel):
    """The part of the chart's `config` that every Regatta-style service reads."""

    environment: str = "production"
    log_level: str = Field(default="INFO", alias="logLevel")
    keepalive_seconds: int = Field(default=75, alias="keepaliveSeconds")
    graceful_shutdown_seconds: int = Field(default=20, alias="gracefulShutdownSeconds")
    redis_key_prefix: str = Field(default="regatta:", alias="redisKeyPrefix")
    max_body_bytes: int = Field(default=1_048_576, alias="maxBodyBytes")
    # Per pod, as the chart's own services: every pod's pool shares the platform's Postgres.
    db_pool_size: int = Field(default=5, ge=1, alias="dbPoolSize")
    db_max_overflow: int = Field(default=0, ge=0, alias="dbMaxOverflow")
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig, alias="rateLimit")
    trusted_proxies: list[str] = Field(default_factory=list, alias="trustedProxies")


class SecretAccess(_Camel):
    """Cluster-wide mode: Secret rights only in the namespaces where ApiServices live.

    The operator's ClusterRole holds no Secret rights; it may bind `clusterRole` (which has
    them) to its own ServiceAccount, and does so with one RoleBinding in each namespace it
    writes connection Secrets into. Empty in namespaced mode (its Role covers its namespace).
    """

    cluster_role: str = Field(default="", alias="clusterRole")
    service_account: str = Field(default="", alias="serviceAccount")


class PlatformSettings(_Camel):
    """Everything the builders need besides the ApiService itself."""

    name: str = "regatta"
    instance: str = "regatta"
    namespace: str = "regatta"
    version: str = ""
    openshift: bool = False
    # The release's pull secrets (the chart's global ones); `defaults` may add more.
    image_pull_secrets: list[str] = Field(default_factory=list, alias="imagePullSecrets")
    defaults: WorkloadDefaults
    config: ServiceConfig = Field(default_factory=ServiceConfig)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    http_route: HttpRouteSettings = Field(default_factory=HttpRouteSettings, alias="httpRoute")
    network_policy: NetworkPolicySettings = Field(
        default_factory=NetworkPolicySettings, alias="networkPolicy"
    )
    service_monitor: ServiceMonitorSettings = Field(
        default_factory=ServiceMonitorSettings, alias="serviceMonitor"
    )
    # Names the chart's own workloads use in the release namespace: an ApiService may not take them.
    reserved_names: list[str] = Field(default_factory=list, alias="reservedNames")
    # A Redis ACL user per ApiService (off only for a shared Redis without ACL support).
    redis_users: bool = Field(default=True, alias="redisUsers")
    secret_access: SecretAccess = Field(default_factory=SecretAccess, alias="secretAccess")
    # Admin connection to the platform's Postgres and the platform's Redis (from Secrets).
    database_admin_url: str = ""
    redis_url: str = ""


CONFIG_VARIABLE = "REGATTA_OPERATOR_CONFIG"


def load_settings(environ: dict[str, str] | None = None) -> PlatformSettings:
    """The settings from `REGATTA_OPERATOR_CONFIG`, the database URLs and `REDIS_URL`."""
    env = dict(os.environ) if environ is None else environ
    raw = env.get(CONFIG_VARIABLE)
    if not raw:
        msg = f"{CONFIG_VARIABLE} is not set: the chart renders it from its values"
        raise RuntimeError(msg)
    data: dict[str, Any] = json.loads(raw)
    # A dedicated admin connection when the chart names one, else the platform's own.
    data["database_admin_url"] = env.get("DATABASE_ADMIN_URL") or env.get("DATABASE_URL", "")
    data["redis_url"] = env.get("REDIS_URL", "")
    return PlatformSettings.model_validate(data)
