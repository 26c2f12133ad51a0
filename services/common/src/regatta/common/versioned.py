"""Rows with an integer ``version`` for optimistic concurrency, and the SQL that keeps it honest.

Updates and deletes are single conditional statements (``WHERE id = :id AND version IN (...)``),
so of several writers holding the same ETag exactly one wins, on Postgres (the row lock makes
the others re-check the condition) and on SQLite (one writer at a time) alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Integer, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from regatta.common.columns import BigIntPK, UTCDateTime, utcnow
from regatta.common.conditional import Precondition

# Ids are BIGINT; anything outside this range cannot exist (404, never a database error).
MAX_ID = 2**63 - 1


class VersionedMixin:
    """Columns every versioned resource has."""

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


M = TypeVar("M", bound=VersionedMixin)


@dataclass(frozen=True, slots=True)
class WriteOutcome(Generic[M]):
    """What a conditional write found: the new row, or why there is none."""

    row: M | None
    current_version: int | None  # set when the row exists but the precondition failed

    @property
    def missing(self) -> bool:
        """The row does not exist."""
        return self.row is None and self.current_version is None


class VersionedRepository(Generic[M]):
    """Insert, read, list, update and delete rows of one versioned model."""

    def __init__(self, model: type[M]) -> None:
        self.model = model

    async def get(self, session: AsyncSession, row_id: int) -> M | None:
        """The row with ``row_id``, or None."""
        return await session.get(self.model, row_id)

    async def insert(self, session: AsyncSession, values: Mapping[str, Any]) -> M:
        """Insert a row at version 1 and return it with its id."""
        now = utcnow()
        model: Any = self.model
        row: M = model(**values, version=1, created_at=now, updated_at=now)
        session.add(row)
        await session.flush()
        return row

    async def page(
        self,
        session: AsyncSession,
        *,
        after: int | None,
        limit: int,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> Sequence[M]:
        """Up to ``limit + 1`` rows after the id ``after``, by id (the extra one says "more")."""
        model: Any = self.model
        statement = select(self.model).where(*where).order_by(model.id).limit(limit + 1)
        if after is not None:
            statement = statement.where(model.id > after)
        return (await session.scalars(statement)).all()

    async def update(
        self,
        session: AsyncSession,
        row_id: int,
        values: Mapping[str, Any],
        precondition: Precondition | None,
    ) -> WriteOutcome[M]:
        """Apply ``values`` and bump the version, if the row exists and the precondition holds."""
        model: Any = self.model
        statement = (
            update(self.model)
            .where(model.id == row_id, *self._condition(precondition))
            .values(**values, version=model.version + 1, updated_at=utcnow())
            .returning(self.model)
        )
        row = (await session.scalars(statement)).one_or_none()
        if row is not None:
            return WriteOutcome(row=row, current_version=None)
        return WriteOutcome(row=None, current_version=await self._version(session, row_id))

    async def delete(
        self, session: AsyncSession, row_id: int, precondition: Precondition | None
    ) -> WriteOutcome[M]:
        """Delete the row if it exists and the precondition holds; ``row`` is the deleted row."""
        model: Any = self.model
        statement = (
            delete(self.model)
            .where(model.id == row_id, *self._condition(precondition))
            .returning(self.model)
        )
        row = (await session.scalars(statement)).one_or_none()
        if row is not None:
            return WriteOutcome(row=row, current_version=None)
        return WriteOutcome(row=None, current_version=await self._version(session, row_id))

    def _condition(self, precondition: Precondition | None) -> list[ColumnElement[bool]]:
        model: Any = self.model
        if precondition is None or precondition.any_version:
            return []
        return [model.version.in_(sorted(precondition.versions))]

    async def _version(self, session: AsyncSession, row_id: int) -> int | None:
        model: Any = self.model
        version: int | None = await session.scalar(select(model.version).where(model.id == row_id))
        return version
