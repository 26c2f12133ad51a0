"""Root pytest configuration: real Postgres and Redis servers for every suite that asks."""

pytest_plugins = ["tests.servers"]
