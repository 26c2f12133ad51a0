"""Settings shared by every service, read from the environment (pydantic-settings)."""

from __future__ import annotations

from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Environment(StrEnum):
    """Where the process runs; anything but development refuses insecure defaults."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class ServiceSettings(BaseSettings):
    """Configuration common to every service; each service subclasses it."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    environment: Environment = Environment.DEVELOPMENT
    database_url: SecretStr = SecretStr("sqlite+aiosqlite:///./data/regatta.db")
    # Fixed: under sustained load, overflow connections churn (tests/load/README.md); for bursts.
    db_pool_size: int = Field(default=15, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    # Client-side bound on a round trip: statement_timeout cannot fire when the network is gone.
    db_command_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    redis_url: SecretStr | None = None
    redis_key_prefix: str = Field(default="regatta:", pattern=r"^[A-Za-z0-9:_.-]{0,64}$")
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=300, ge=1, le=86_400)
    cache_max_entries: int = Field(default=10_000, ge=1)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    # Per client (API key, else address) and route class; in Redis, else in-process (ratelimit.py).
    rate_limit_enabled: bool = False
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400)
    # Requests per window (all at once, then at an even pace); 0: unlimited.
    rate_limit_reads: int = Field(default=1200, ge=0, le=1_000_000)
    rate_limit_writes: int = Field(default=120, ge=0, le=1_000_000)
    # Peers whose X-Forwarded-For is believed (the ingress), by the rate limit and uvicorn.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=lambda: [ip_network("127.0.0.1/32"), ip_network("::1/128")]
    )
    run_migrations_on_start: bool | None = None
    migrate_wait_seconds: float = Field(default=300, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Above nginx's upstream keep-alive (60 s): it never reuses a connection uvicorn is closing.
    keepalive_seconds: int = Field(default=75, ge=1)
    graceful_shutdown_seconds: int = Field(default=20, ge=1)
    # Readiness 503 this long after SIGTERM, before draining (0: the chart's preStop sleeps).
    shutdown_delay_seconds: float = Field(default=0.0, ge=0, le=300)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    log_format: Literal["json", "text"] = "json"  # JSON lines for Loki; "text" for a terminal

    @field_validator("cors_origins", "api_keys", "trusted_proxies", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # Comma-separated in the environment (NoDecode: not JSON).
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_insecure(self) -> Self:
        production = self.environment is Environment.PRODUCTION
        if "*" in self.cors_origins and self.cors_allow_credentials:
            msg = "CORS_ORIGINS='*' cannot be combined with CORS_ALLOW_CREDENTIALS"
        elif production and self.uses_sqlite:
            msg = "production needs DATABASE_URL pointing at Postgres, not the SQLite default"
        elif production and self.redis_url is None:
            msg = "production needs REDIS_URL: the cache must be shared by every replica"
        elif production and not self.api_keys and self.api_keys_file is None:
            msg = "production needs API_KEYS or API_KEYS_FILE: writes must not be open"
        elif production and "*" in self.cors_origins:
            msg = "production refuses CORS_ORIGINS='*'"
        else:
            return self
        raise ValueError(msg)

    @property
    def uses_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite file."""
        return self.database_url.get_secret_value().startswith("sqlite")

    @property
    def migrate_on_start(self) -> bool:
        """Run migrations in the lifespan: on by default only outside production."""
        if self.run_migrations_on_start is not None:
            return self.run_migrations_on_start
        return self.environment is not Environment.PRODUCTION
