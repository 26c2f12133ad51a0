"""``Idempotency-Key`` for creating POSTs: the response stored in the write's own transaction."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CTE,
    JSON,
    Column,
    ColumnElement,
    Insert,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    bindparam,
    case,
    delete,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.data.columns import UTCDateTime, utcnow
from regatta.common.data.errors import IdempotencyKeyInFlightError, IdempotencyKeyReusedError
from regatta.common.data.executor import Statements, statements_of

logger = logging.getLogger("regatta.idempotency")
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def idempotency_table(metadata: MetaData, name: str) -> Table:
    """The table a service keeps its idempotency records in (one per service)."""
    return Table(
        name,
        metadata,
        Column("scope", String(64), primary_key=True),
        Column("key", String(255), primary_key=True),
        Column("fingerprint", String(64), nullable=False),
        Column("status_code", Integer, nullable=False),
        Column("headers", JSON, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("created_at", UTCDateTime, nullable=False, index=True),
    )


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as a write produced it, ready to be sent or replayed."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


# Given the drawn id: the response to store, and the write built on IdempotencyStore.claim.
PrepareWrite = Callable[[Any], Awaitable[tuple[StoredResponse, Select[Any], dict[str, Any]]]]
# A create in the caller's session, returning the response to store.
SessionWrite = Callable[[AsyncSession], Awaitable[StoredResponse]]


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """The key a client sent, who sent it, and a fingerprint of what it asked for."""

    key: str
    scope: str
    fingerprint: str


def keyed_request(
    *, method: str, path: str, key: str | None, scope: str, payload: Any
) -> IdempotentRequest | None:
    """What a creating request asks for under its key (None without one), fingerprinted."""
    if key is None:
        return None
    canonical = _COMPACT.encode([method, path, _canonical(payload)])
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return IdempotentRequest(key=key, scope=scope, fingerprint=digest)


def _canonical(value: Any) -> Any:
    # The validated values' meaning: key order and a number's spelling (3, 3.0, 3e0) do not
    # count, so a re-serialized retry replays; kinds are tagged, so 3 and "3" stay apart.
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float | Decimal):
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if number.is_finite() and number == number.to_integral_value():
            return ["n", str(int(number))]
        return ["n", format(number.normalize(), "f")]
    if isinstance(value, Mapping):
        return ["o", sorted((str(key), _canonical(item)) for key, item in value.items())]
    if isinstance(value, list | tuple):
        return ["a", [_canonical(item) for item in value]]
    return ["s", str(value)]  # datetimes, UUIDs, URLs: their canonical text


class IdempotencyStore:
    """Runs creating writes so that a key is honoured exactly once within the retention window."""

    def __init__(
        self, table: Table, *, ttl_seconds: int, observe: Callable[[str], None] | None = None
    ) -> None:
        self.table = table
        self.ttl = timedelta(seconds=ttl_seconds)
        self._in_flight: set[tuple[str, str]] = set()
        # The Postgres CTE claiming a key (parameters: claim_parameters()).
        self.claim: CTE = self._upsert(postgresql.insert).returning(table.c.key).cte("claim")
        self._records = {
            "postgresql": self._upsert(postgresql.insert),
            "sqlite": self._upsert(sqlite.insert),
        }
        self._looked_up: dict[ColumnElement[Any], Select[Any]] = {}
        self._live = select(
            table.c.fingerprint, table.c.status_code, table.c.headers, table.c.body
        ).where(
            table.c.scope == bindparam("scope"),
            table.c.key == bindparam("key"),
            table.c.created_at > bindparam("live_after"),  # an expired record frees its key
        )
        self._observe = observe or (lambda _outcome: None)

    async def run(
        self, session: AsyncSession, request: IdempotentRequest | None, write: SessionWrite
    ) -> StoredResponse:
        """Run ``write`` and commit; with a key, store or replay its response atomically."""
        if request is None:
            async with session.begin():
                return await write(session)
        return await self._observed(self._run_keyed(session, request, write))

    async def run_claiming(
        self,
        connection: Statements,
        request: IdempotentRequest,
        draw: ColumnElement[Any],
        prepare: PrepareWrite,
    ) -> StoredResponse:
        """Postgres: replay a live record, or else claim the key and write in one statement."""
        return await self._observed(self._claim_or_replay(connection, request, draw, prepare))

    async def _observed(self, outcome: Awaitable[StoredResponse]) -> StoredResponse:
        try:
            response = await outcome
        except IdempotencyKeyInFlightError:
            self._observe("conflict")
            raise
        except IdempotencyKeyReusedError:
            self._observe("mismatch")
            raise
        self._observe("replayed" if response.replayed else "stored")
        return response

    def _upsert(self, insert: Callable[[Table], postgresql.Insert | sqlite.Insert]) -> Insert:
        # Parameters as claim_parameters() names them; an unpurged expired record is replaced.
        table = self.table
        values = {
            column.key: bindparam(f"claim_{column.key}", type_=column.type) for column in table.c
        }
        record = {name: value for name, value in values.items() if name not in ("scope", "key")}
        return (
            insert(table)
            .values(values)
            .on_conflict_do_update(
                index_elements=[table.c.scope, table.c.key],
                set_=record,
                where=table.c.created_at
                <= bindparam("claim_expired_at", type_=table.c.created_at.type),
            )
        )

    def claim_parameters(
        self, request: IdempotentRequest, response: StoredResponse
    ) -> dict[str, Any]:
        """The parameters of :attr:`claim` for ``request`` answered by ``response``."""
        now = utcnow()
        return {
            "claim_scope": request.scope,
            "claim_key": request.key,
            "claim_fingerprint": request.fingerprint,
            "claim_status_code": response.status_code,
            "claim_headers": response.headers,
            "claim_body": response.body,
            "claim_created_at": now,
            "claim_expired_at": now - self.ttl,
        }

    async def _claim_or_replay(
        self,
        connection: Statements,
        request: IdempotentRequest,
        draw: ColumnElement[Any],
        prepare: PrepareWrite,
    ) -> StoredResponse:
        stored, drawn = await self._look_up(connection, request, draw)
        if stored is not None:
            return stored
        response, write, parameters = await prepare(drawn)
        claimed = {**parameters, **self.claim_parameters(request, response)}
        counted = await connection.rows(write, claimed)
        if next(iter(counted[0].values())):
            return response
        # Another request with this key won the race on its index entry: replay its response.
        stored = await self._find(connection, request)
        if stored is None:  # ... and its record expired in between: let the client retry
            raise IdempotencyKeyInFlightError
        return stored

    async def _run_keyed(
        self, session: AsyncSession, request: IdempotentRequest, write: SessionWrite
    ) -> StoredResponse:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":  # an advisory lock covers every replica
            return await self._write_keyed(session, request, write, dialect)
        # SQLite runs in one process: the keys in flight are held in memory.
        claim = (request.scope, request.key)
        if claim in self._in_flight:
            raise IdempotencyKeyInFlightError
        self._in_flight.add(claim)
        try:
            return await self._write_keyed(session, request, write, dialect)
        finally:
            self._in_flight.discard(claim)

    async def _write_keyed(
        self, session: AsyncSession, request: IdempotentRequest, write: SessionWrite, dialect: str
    ) -> StoredResponse:
        async with session.begin():
            if dialect == "postgresql":  # an advisory lock, held to the commit
                name = f"{self.table.name}\0{request.scope}\0{request.key}".encode()
                lock_id = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
                if not await session.scalar(select(func.pg_try_advisory_xact_lock(lock_id))):
                    raise IdempotencyKeyInFlightError
            stored = await self._find(statements_of(session), request)
            if stored is not None:
                return stored
            response = await write(session)
            await session.execute(self._records[dialect], self.claim_parameters(request, response))
            return response

    async def _find(
        self, connection: Statements, request: IdempotentRequest
    ) -> StoredResponse | None:
        found = await connection.rows(self._live, self._live_parameters(request))
        return self._replay(found[0], request) if found else None

    async def _look_up(
        self, connection: Statements, request: IdempotentRequest, draw: ColumnElement[Any]
    ) -> tuple[StoredResponse | None, Any]:
        # The live record, or else ``draw`` evaluated: one statement either way.
        found = self._looked_up.get(draw)
        if found is None:
            live = self._live.subquery()
            drawn = case((live.c.fingerprint.is_(None), draw)).label("drawn")
            one = select(literal(1).label("one")).subquery()
            statement: Select[Any] = select(*live.c, drawn).select_from(one.outerjoin(live, true()))
            self._looked_up[draw] = found = statement
        # Safe to repeat: a sequence value drawn by a failed attempt is only a gap.
        parameters = self._live_parameters(request)
        row = (await connection.rows(found, parameters))[0]
        if row["fingerprint"] is None:
            return None, row["drawn"]
        return self._replay(row, request), None

    def _live_parameters(self, request: IdempotentRequest) -> dict[str, Any]:
        return {"scope": request.scope, "key": request.key, "live_after": utcnow() - self.ttl}

    def _replay(self, row: Mapping[Any, Any], request: IdempotentRequest) -> StoredResponse:
        if row["fingerprint"] != request.fingerprint:
            raise IdempotencyKeyReusedError
        logger.info("idempotent replay of key %s", request.key)
        return StoredResponse(
            status_code=row["status_code"],
            body=row["body"],
            headers=dict(row["headers"]),
            replayed=True,
        )

    async def purge_expired(self, session: AsyncSession) -> int:
        """Delete records past the retention window; returns how many went."""
        async with session.begin():
            result = await session.execute(
                delete(self.table).where(self.table.c.created_at <= utcnow() - self.ttl)
            )
        return int(getattr(result, "rowcount", 0) or 0)
