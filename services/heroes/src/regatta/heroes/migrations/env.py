"""Alembic environment of the heroes service."""

from regatta.common.data.migrations import run_env
from regatta.heroes.models import Base

run_env(Base.metadata)
