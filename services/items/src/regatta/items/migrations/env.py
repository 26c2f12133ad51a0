"""Alembic environment of the items service."""

from regatta.common.data.migrations import run_env
from regatta.items.models import Base

run_env(Base.metadata)
