"""The outbox: events written in their change's transaction; the relay's statements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    CTE,
    BindParameter,
    Column,
    Index,
    MetaData,
    Row,
    String,
    Table,
    Text,
    any_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.data.columns import BigIntPK, UTCDateTime, utcnow
from regatta.common.data.executor import Statements


def outbox_table(metadata: MetaData, name: str) -> Table:
    """The outbox a service writes its events to (one per service)."""
    table = Table(
        name,
        metadata,
        Column("id", BigIntPK, primary_key=True),
        Column("event_type", String(64), nullable=False),
        Column("payload", Text, nullable=False),
        Column("occurred_at", UTCDateTime, nullable=False),
        Column("published_at", UTCDateTime),
        # The W3C trace context of the change (JSON), so the event's consumers join its trace.
        Column("trace_context", Text),
        sqlite_autoincrement=True,
    )
    # The relay only ever looks for unpublished rows: keep that index tiny.
    Index(
        f"ix_{name}_unpublished",
        table.c.id,
        postgresql_where=table.c.published_at.is_(None),
        sqlite_where=table.c.published_at.is_(None),
    )
    return table


def event_parameters(
    event_type: str, payload: bytes, trace_context: str | None, occurred_at: datetime | None = None
) -> dict[str, Any]:
    """The parameters of an event's row; ``trace_context`` is the change's, as a JSON carrier."""
    return {
        "event_type": event_type,
        "event_payload": payload.decode(),
        "event_occurred_at": occurred_at or utcnow(),
        "event_trace_context": trace_context,
    }


def _event_values(outbox: Table) -> dict[str, BindParameter[Any]]:
    return {
        "event_type": bindparam("event_type", type_=outbox.c.event_type.type),
        "payload": bindparam("event_payload", type_=outbox.c.payload.type),
        "occurred_at": bindparam("event_occurred_at", type_=outbox.c.occurred_at.type),
        "trace_context": bindparam("event_trace_context", type_=outbox.c.trace_context.type),
    }


async def record_event(
    connection: Statements,
    outbox: Table,
    event_type: str,
    payload: bytes,
    trace_context: str | None,
) -> None:
    """Add an event to the outbox, inside the caller's transaction."""
    await connection.rows(
        insert(outbox).values(_event_values(outbox)),
        event_parameters(event_type, payload, trace_context),
    )


def event_for_each(outbox: Table, written: CTE) -> CTE:
    """Postgres: an event (:func:`event_parameters`) for each row ``written`` yields, as a CTE."""
    values = _event_values(outbox)
    event = select(*values.values()).select_from(written)
    return insert(outbox).from_select(list(values), event).cte("event")


async def take_unpublished(session: AsyncSession, outbox: Table, limit: int) -> Sequence[Row[Any]]:
    """The oldest ``limit`` unpublished events, locked to the transaction; others' locks skipped."""
    query = select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return (await session.execute(query)).all()


async def mark_published(
    session: AsyncSession, outbox: Table, ids: Sequence[int], published_at: datetime
) -> None:
    """Mark the events ``ids`` published at ``published_at``."""
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter: IN would render one per id (and a statement per count).
        taken = outbox.c.id == any_(bindparam("ids", list(ids), type_=ARRAY(outbox.c.id.type)))
    else:
        taken = outbox.c.id.in_(ids)
    await session.execute(update(outbox).where(taken).values(published_at=published_at))


async def backlog(session: AsyncSession, outbox: Table) -> tuple[int, datetime | None]:
    """How many events wait, and when the oldest of them occurred (None when none waits)."""
    # The first unpublished by id is one row of the partial index; min() would read them all.
    first = (
        select(outbox.c.occurred_at)
        .where(outbox.c.published_at.is_(None))
        .order_by(outbox.c.id)
        .limit(1)
        .scalar_subquery()
    )
    waiting = select(func.count(), first).where(outbox.c.published_at.is_(None))
    count, oldest = (await session.execute(waiting)).one()
    return int(count), oldest
