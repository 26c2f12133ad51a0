"""Settings of the heroes service (everything it needs is common to every service)."""

from __future__ import annotations

from regatta.common.settings import ServiceSettings


class HeroesSettings(ServiceSettings):
    """Configuration of the heroes service, from the environment."""
