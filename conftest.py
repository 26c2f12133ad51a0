"""Root pytest configuration: real Postgres and Redis servers for every suite that asks."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.servers"]

# A test that uses these fixtures needs the real servers: it carries the ``postgres`` marker
# whether or not its module says so, so that ``make check`` (``-m "not postgres and not
# images"``) can never run it. Tests that reach a server another way (``getfixturevalue``, or
# a daemon of their own) are marked by hand; under ``make check`` a daemon refuses to start
# (infra/local/daemons.py), so a forgotten marker fails loudly instead of slowing the loop.
SERVER_FIXTURES = frozenset({"postgres_server", "postgres_url", "redis_server", "redis_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a server fixture ``postgres``."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
