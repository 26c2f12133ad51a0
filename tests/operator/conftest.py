"""Fixtures of the operator's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster as ClusterConfig
from lightkube.config.models import User

from regatta.operator.kube import Cluster
from regatta.operator.settings import PlatformSettings
from tests.operator.emulator import ApplyingEmulator
from tests.operator.support import platform_settings


@pytest.fixture
def platform() -> PlatformSettings:
    """The default chart's settings, with the Prometheus Operator present.

    Redis users need a real Redis (test_tenants.py); elsewhere the shared URL stands in.
    """
    return platform_settings(monitoring=True, redis_users=False)


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """kmock that understands server-side apply, as the operator writes its children with it."""
    return {**kmock_options, "cls": ApplyingEmulator}


@pytest.fixture
async def cluster(kmock: kmock.KubernetesEmulator) -> AsyncIterator[Cluster]:
    """The operator's client of the Kubernetes API, pointed at kmock."""
    config = KubeConfig.from_one(
        cluster=ClusterConfig(server=str(kmock.url)), user=User(token="test")
    )
    cluster = Cluster(AsyncClient(config=config, field_manager="regatta-operator"))
    yield cluster
    await cluster.close()
