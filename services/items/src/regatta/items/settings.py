"""Settings of the items service (everything it needs is common to every service)."""

from __future__ import annotations

from regatta.common.settings import ServiceSettings


class ItemsSettings(ServiceSettings):
    """Configuration of the items service, from the environment."""
