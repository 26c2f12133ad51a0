"""Alembic environment of the notifications service."""

from regatta.common.data.migrations import run_env
from regatta.notifications.models import Base

run_env(Base.metadata)
