"""The ApiService spec as the operator reads it, and the checks the CRD's schema cannot make."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GROUP = "regatta.dev"
VERSION = "v1alpha1"
PLURAL = "apiservices"
KIND = "ApiService"

# Variables the operator sets itself; an ApiService's `env` may not replace them.
RESERVED_ENV = frozenset(
    {
        "HOST",
        "PORT",
        "ENVIRONMENT",
        "LOG_LEVEL",
        "KEEPALIVE_SECONDS",
        "GRACEFUL_SHUTDOWN_SECONDS",
        "RUN_MIGRATIONS_ON_START",
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_KEY_PREFIX",
    }
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class InvalidSpecError(ValueError):
    """A spec the schema let through but the operator cannot build (reported in a condition)."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Autoscaling(_Spec):
    """An HPA on CPU between two replica counts."""

    min_replicas: int = Field(default=2, ge=1, alias="minReplicas")
    max_replicas: int = Field(default=10, ge=1, alias="maxReplicas")
    target_cpu_utilization_percentage: int = Field(
        default=70, ge=1, le=100, alias="targetCPUUtilizationPercentage"
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            msg = (
                f"autoscaling.minReplicas ({self.min_replicas}) exceeds "
                f"autoscaling.maxReplicas ({self.max_replicas})"
            )
            raise ValueError(msg)
        return self


class EnvVar(_Spec):
    """One plain environment variable."""

    name: str
    value: str = ""


class ApiServiceSpec(_Spec):
    """What a team asks for: an image behind a path prefix, with optional database and Redis."""

    image: str = Field(min_length=1)
    version: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
    )
    port: int = Field(default=8000, ge=1, le=65535)
    path_prefix: str = Field(alias="pathPrefix", pattern=r"^/[a-z0-9][a-z0-9/_-]*$")
    replicas: int | None = Field(default=None, ge=1)
    autoscaling: Autoscaling | None = None
    resources: dict[str, Any] | None = None
    env: list[EnvVar] = Field(default_factory=list)
    database: bool = False
    database_deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", alias="databaseDeletionPolicy"
    )
    redis: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ApiServiceSpec:
        if self.replicas is not None and self.autoscaling is not None:
            msg = "set either replicas or autoscaling, not both"
            raise ValueError(msg)
        names = [item.name for item in self.env]
        for name in names:
            if not _ENV_NAME.match(name):
                msg = f"env: {name!r} is not a valid variable name"
                raise ValueError(msg)
            if name in RESERVED_ENV:
                msg = f"env: {name} is set by the operator"
                raise ValueError(msg)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            msg = f"env: {', '.join(duplicates)} given more than once"
            raise ValueError(msg)
        return self


def parse_spec(spec: dict[str, Any]) -> ApiServiceSpec:
    """The spec, or InvalidSpecError with a message a user can act on."""
    try:
        return ApiServiceSpec.model_validate(spec)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise InvalidSpecError("; ".join(problems)) from exc
