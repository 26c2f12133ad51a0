"""The local stack (Postgres, Redis, two replicas per API, the worker, nginx), once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemons import DaemonUnavailableError
from stack import Stack

from tests.servers import unavailable


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory: Path = tmp_path_factory.mktemp("stack")
    running = Stack(directory, env={"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"})
    try:
        running.start()
    except DaemonUnavailableError as error:
        running.stop()
        unavailable(error)
    try:
        yield running
    finally:
        running.stop()
