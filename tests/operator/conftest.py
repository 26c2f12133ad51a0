"""Fixtures of the operator's tests."""

from __future__ import annotations

import pytest

from regatta.operator.settings import PlatformSettings
from tests.operator.support import platform_settings


@pytest.fixture
def platform() -> PlatformSettings:
    """The default chart's settings, with the Prometheus Operator present."""
    return platform_settings(monitoring=True)
