"""Versioned rows, and conditional writes of which exactly one of several racing writers wins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    CTE,
    ColumnElement,
    Delete,
    Integer,
    Row,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from regatta.common.data.columns import BigIntPK, UTCDateTime, utcnow
from regatta.common.data.db import Database
from regatta.common.data.executor import Statements
from regatta.common.data.outbox import event_for_each

# Ids are BIGINT; anything outside this range cannot exist (404, never a database error).
MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Precondition:
    """What If-Match requires: any current version (``*``), or one of ``versions``."""

    any_version: bool
    versions: frozenset[int]


class VersionedMixin:
    """Columns every versioned resource has."""

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


M = TypeVar("M", bound=VersionedMixin)


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a conditional write found: the new row, or why there is none."""

    row: Mapping[str, Any] | None
    current_version: int | None  # set when the row exists but the precondition failed


class VersionedRepository(Generic[M]):
    """Insert, read, list, update and delete rows of one versioned model."""

    def __init__(self, model: type[M]) -> None:
        table: Table = getattr(model, "__table__")  # noqa: B009 -- M is any mapped class
        self.table = table
        self._by_id = select(table).where(table.c.id == bindparam("id"))
        self._version_of = select(table.c.version).where(table.c.id == bindparam("id"))
        # Pages in id order, built once; a list adds its filters per request.
        self._first_page = select(table).order_by(table.c.id).limit(bindparam("limit"))
        self._later_page = self._first_page.where(table.c.id > bindparam("after"))
        # Postgres: the next id of the table's sequence, drawn before a row is written.
        self.next_id = func.nextval(func.pg_get_serial_sequence(table.name, "id"))
        self.draw = select(self.next_id.label("id"))
        self._creates: dict[tuple[tuple[str, ...], CTE | None, Table | None], Select[Any]] = {}

    def create(
        self, names: tuple[str, ...], claim: CTE | None, outbox: Table | None
    ) -> Select[Any]:
        """Postgres: insert a row (``row_<name>``) if ``claim`` yields, and its event; a count."""
        statement = self._creates.get((names, claim, outbox))
        if statement is not None:
            return statement
        table = self.table
        row = [bindparam(f"row_{name}", type_=table.c[name].type) for name in names]
        if claim is None:
            inserted = insert(table).values(dict(zip(names, row, strict=True)))
        else:
            chosen = select(*(value.label(name) for name, value in zip(names, row, strict=True)))
            inserted = insert(table).from_select(list(names), chosen.select_from(claim))
        item = inserted.returning(table.c.id).cte("item")
        statement = select(func.count()).select_from(item)
        if outbox is not None:
            statement = statement.add_cte(event_for_each(outbox, item))
        self._creates[(names, claim, outbox)] = statement
        return statement

    async def read(self, database: Database, row_id: int) -> Mapping[str, Any] | None:
        """The row with ``row_id`` as plain columns (no ORM identity map), or None."""
        found = await database.read(self._by_id, {"id": row_id})
        return found[0] if found else None

    async def read_page(
        self,
        database: Database,
        *,
        after: int | None,
        limit: int,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> list[dict[str, Any]]:
        """Up to ``limit + 1`` rows after the id ``after``, by id (the extra one says "more")."""
        page = self._first_page if after is None else self._later_page
        if where:
            page = page.where(*where)
        # The first page has no ``after``: a parameter a statement does not name is ignored.
        return await database.read(page, {"limit": limit + 1, "after": after})

    async def insert(self, session: AsyncSession, values: Mapping[str, Any]) -> Row[Any]:
        """Insert a row at version 1 and return it, id included (one INSERT ... RETURNING)."""
        now = utcnow()
        table = self.table
        statement = (
            insert(table)
            .values(**values, version=1, created_at=now, updated_at=now)
            .returning(*table.c)
        )
        return (await session.execute(statement)).one()

    async def update(
        self,
        connection: Statements,
        row_id: int,
        values: Mapping[str, Any],
        precondition: Precondition | None,
    ) -> WriteOutcome:
        """Apply ``values`` and bump the version, if the row exists and the precondition holds."""
        table = self.table
        statement = update(table).values(**values, version=table.c.version + 1, updated_at=utcnow())
        return await self._write(connection, statement, row_id, precondition)

    async def delete(
        self, connection: Statements, row_id: int, precondition: Precondition | None
    ) -> WriteOutcome:
        """Delete the row if it exists and the precondition holds; ``row`` is the deleted row."""
        return await self._write(connection, delete(self.table), row_id, precondition)

    async def _write(
        self,
        connection: Statements,
        statement: Update | Delete,
        row_id: int,
        precondition: Precondition | None,
    ) -> WriteOutcome:
        # The written row, or else the version that refused the write (None: no such row).
        table = self.table
        condition: list[ColumnElement[bool]] = []
        if precondition is not None and not precondition.any_version:
            # One equality per version, not IN (an array on asyncpg); no versions: no match.
            versions = [table.c.version == known for known in sorted(precondition.versions)]
            condition.append(or_(*versions) if versions else false())
        statement = statement.where(table.c.id == row_id, *condition)
        written = await connection.rows(statement.returning(*table.c))
        if written:
            return WriteOutcome(row=written[0], current_version=None)
        found = await connection.rows(self._version_of, {"id": row_id})
        return WriteOutcome(row=None, current_version=found[0]["version"] if found else None)
