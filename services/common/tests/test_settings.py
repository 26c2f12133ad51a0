"""Settings read the environment and refuse insecure combinations outside development."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from regatta.common.settings import ServiceSettings

PG = "postgresql+asyncpg://regatta@db/regatta"


def test_development_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "ENVIRONMENT", "API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    settings = ServiceSettings()
    assert settings.uses_sqlite
    assert settings.migrate_on_start
    assert settings.redis_url is None
    assert settings.max_body_bytes == 1024 * 1024


def test_environment_variables_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", PG)
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("API_KEYS", "k1,k2")
    settings = ServiceSettings()
    assert not settings.uses_sqlite
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(settings)
    assert "regatta@db" not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({}, "Postgres"),
        ({"database_url": PG}, "REDIS_URL"),
        ({"database_url": PG, "redis_url": "redis://r"}, "API_KEYS"),
        (
            {"database_url": PG, "redis_url": "redis://r", "api_keys": "k", "cors_origins": "*"},
            "CORS",
        ),
    ],
)
def test_production_refuses_insecure_defaults(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], complaint: str
) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "API_KEYS", "CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match=complaint):
        ServiceSettings(**{"environment": "production", **overrides})


def test_production_with_everything_set_is_accepted() -> None:
    values: dict[str, Any] = {
        "environment": "production",
        "database_url": PG,
        "redis_url": "redis://r",
        "api_keys": "k",
    }
    settings = ServiceSettings(**values)
    assert not settings.migrate_on_start


def test_wildcard_cors_with_credentials_is_refused_everywhere() -> None:
    wildcard: dict[str, Any] = {"cors_origins": "*", "cors_allow_credentials": True}
    with pytest.raises(ValidationError, match="CORS"):
        ServiceSettings(**wildcard)
