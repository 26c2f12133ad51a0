"""Platform settings as the chart hands them to the operator, and ApiService bodies."""

from __future__ import annotations

import copy
import functools
from typing import Any

from regatta.operator.settings import CONFIG_VARIABLE, PlatformSettings, load_settings
from tests.chart.manifests import env_of, pod_spec, render

OPERATOR_VALUES: dict[str, Any] = {"operator": {"enabled": True}}


@functools.cache
def chart_environment(*, monitoring: bool = False) -> dict[str, str]:
    """The plain environment the chart gives the operator (values, not Secret references)."""
    values = copy.deepcopy(OPERATOR_VALUES)
    if monitoring:
        values["metrics"] = {"serviceMonitor": {"force": True}}
    operator = render(values).get("Deployment", "regatta-operator")
    env = env_of(pod_spec(operator)["containers"][0])
    return {name: item["value"] for name, item in env.items() if "value" in item}


def platform_settings(*, monitoring: bool = False, **overrides: Any) -> PlatformSettings:
    """Settings read from the chart's rendering, as the operator reads its environment."""
    environ = {
        CONFIG_VARIABLE: chart_environment(monitoring=monitoring)[CONFIG_VARIABLE],
        "DATABASE_ADMIN_URL": "postgresql+asyncpg://regatta:secret@regatta-postgresql:5432/regatta",
        "REDIS_URL": "redis://:pw@regatta-redis:6379/0",
    }
    return load_settings(environ).model_copy(update=overrides)


def api_service(
    name: str = "orders", namespace: str = "shop", generation: int = 1, **spec: Any
) -> dict[str, Any]:
    """An ApiService body as the API server would hand it to the operator."""
    return {
        "apiVersion": "regatta.dev/v1alpha1",
        "kind": "ApiService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "generation": generation,
        },
        "spec": {"image": "ghcr.io/example/orders:1.4.2", "pathPrefix": "/orders", **spec},
    }
