"""Alembic environment of the items service."""

from regatta.common.migrations import run_env
from regatta.items.models import Base

run_env(Base.metadata)
