"""Settings of the notifications service and its delivery worker."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import NoDecode

from regatta.common.settings import Environment, ServiceSettings

DEVELOPMENT_SIGNING_SECRET = "regatta-development-signing-secret"  # noqa: S105 -- refused in production
LOOPBACK = ["127.0.0.0/8", "::1/128"]


class NotificationsSettings(ServiceSettings):
    """Configuration of the notifications API and worker, from the environment."""

    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_from: str = "Regatta <notifications@regatta.localhost>"
    # Each bounds one whole attempt (connect, send, reply); at most half the lease.
    smtp_timeout_seconds: float = Field(default=10, gt=0, le=120)
    webhook_signing_secret: SecretStr = SecretStr(DEVELOPMENT_SIGNING_SECRET)
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=120)
    # Networks a webhook may reach although they are private; None: loopback in development
    # (so `make up` can show a webhook arriving), nothing elsewhere. Link-local never.
    webhook_allowed_networks: Annotated[list[str] | None, NoDecode] = None
    delivery_max_attempts: int = Field(default=8, ge=1, le=100)
    delivery_backoff_base_seconds: float = Field(default=2, gt=0)
    delivery_backoff_max_seconds: float = Field(default=900, gt=0)
    delivery_lease_seconds: float = Field(default=60, gt=0)
    delivery_batch_size: int = Field(default=20, ge=1, le=500)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    worker_port: int = Field(default=9000, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _parse_networks(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("webhook_allowed_networks"), str):
            raw = data["webhook_allowed_networks"]
            data["webhook_allowed_networks"] = [n.strip() for n in raw.split(",") if n.strip()]
        return data

    @model_validator(mode="after")
    def _check_delivery(self) -> Self:
        longest = max(self.webhook_timeout_seconds, self.smtp_timeout_seconds)
        if longest * 2 > self.delivery_lease_seconds:
            # An attempt must end (and its outcome be stored) while its claim still holds, or a
            # second worker takes it over and sends it again.
            msg = (
                f"DELIVERY_LEASE_SECONDS ({self.delivery_lease_seconds:g}) must be at least twice "
                f"the longest attempt deadline ({longest:g}: WEBHOOK_TIMEOUT_SECONDS, "
                "SMTP_TIMEOUT_SECONDS)"
            )
            raise ValueError(msg)
        for network in self.allowed_networks:
            if network.is_link_local or network.overlaps(ipaddress.ip_network("169.254.0.0/16")):
                msg = f"link-local networks can never be allowed for webhooks: {network}"
                raise ValueError(msg)
        if (
            self.environment is Environment.PRODUCTION
            and self.webhook_signing_secret.get_secret_value() == DEVELOPMENT_SIGNING_SECRET
        ):
            msg = "production needs WEBHOOK_SIGNING_SECRET: the development secret is public"
            raise ValueError(msg)
        return self

    @property
    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Private networks webhooks may reach, parsed."""
        names = self.webhook_allowed_networks
        if names is None:
            names = LOOPBACK if self.environment is Environment.DEVELOPMENT else []
        return [ipaddress.ip_network(name, strict=False) for name in names]
