"""``Idempotency-Key`` for creating POSTs, with the IETF draft's semantics.

The first request with a key runs and its response is stored *in the same transaction* as the
write, so a replay can never disagree with what was created. While it runs, the key is locked
(a transaction-scoped advisory lock on Postgres, shared by every replica; an in-process set on
the single-process SQLite default) and a concurrent request with the same key gets 409. Within
the retention window the same key with the same request replays the stored response; with a
different request it gets 422.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy import (
    JSON,
    Column,
    Insert,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.columns import UTCDateTime, utcnow
from regatta.common.errors import ProblemError

logger = logging.getLogger("regatta.idempotency")

REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe creation: the same key and body replay the first response.",
    ),
]


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


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """The key a client sent, who sent it, and a fingerprint of what it asked for."""

    key: str
    scope: str
    fingerprint: str


def fingerprint(method: str, path: str, payload: Any) -> str:
    """A digest of the request's meaning: key order and whitespace in the body do not count."""
    canonical = json.dumps(
        [method, path, payload], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    """Runs creating writes so that a key is honoured exactly once within the retention window."""

    def __init__(
        self,
        table: Table,
        *,
        ttl_seconds: int,
        observe: Callable[[str], None] | None = None,
    ) -> None:
        self.table = table
        self.ttl = timedelta(seconds=ttl_seconds)
        self._in_flight: set[tuple[str, str]] = set()
        # Told each keyed request's outcome: stored, replayed, conflict or mismatch.
        self._observe = observe or (lambda _outcome: None)

    async def run(
        self,
        session: AsyncSession,
        request: IdempotentRequest | None,
        write: Callable[[AsyncSession], Awaitable[StoredResponse]],
    ) -> StoredResponse:
        """Run ``write`` and commit; with a key, store or replay its response atomically."""
        if request is None:
            async with session.begin():
                return await write(session)
        try:
            response = await self._run_keyed(session, request, write)
        except ProblemError as exc:
            outcome = _OUTCOMES_BY_SLUG.get(exc.slug or "")
            if outcome is not None:
                self._observe(outcome)
            raise
        self._observe("replayed" if response.replayed else "stored")
        return response

    async def _run_keyed(
        self,
        session: AsyncSession,
        request: IdempotentRequest,
        write: Callable[[AsyncSession], Awaitable[StoredResponse]],
    ) -> StoredResponse:
        with self._claim_locally(session, request):
            async with session.begin():
                await self._lock(session, request)
                stored = await self._find(session, request)
                if stored is not None:
                    return stored
                response = await write(session)
                await session.execute(self._record(session, request, response))
                return response

    def _record(
        self, session: AsyncSession, request: IdempotentRequest, response: StoredResponse
    ) -> Insert:
        # An expired record of the key may still be there (the purge runs now and then): it
        # frees the key, so the new record replaces it in the same statement.
        dialect = session.get_bind().dialect.name
        upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        now = utcnow()
        values = {
            "fingerprint": request.fingerprint,
            "status_code": response.status_code,
            "headers": response.headers,
            "body": response.body,
            "created_at": now,
        }
        table = self.table
        return (
            upsert(table)
            .values(scope=request.scope, key=request.key, **values)
            .on_conflict_do_update(
                index_elements=[table.c.scope, table.c.key],
                set_=values,
                where=table.c.created_at <= now - self.ttl,
            )
        )

    @contextmanager
    def _claim_locally(self, session: AsyncSession, request: IdempotentRequest) -> Iterator[None]:
        if session.get_bind().dialect.name == "postgresql":
            yield  # the advisory lock below covers every replica
            return
        claim = (request.scope, request.key)
        if claim in self._in_flight:
            raise _in_flight_error()
        self._in_flight.add(claim)
        try:
            yield
        finally:
            self._in_flight.discard(claim)

    async def _lock(self, session: AsyncSession, request: IdempotentRequest) -> None:
        if session.get_bind().dialect.name != "postgresql":
            return
        digest = hashlib.sha256(f"{self.table.name}\0{request.scope}\0{request.key}".encode())
        lock_id = int.from_bytes(digest.digest()[:8], "big", signed=True)
        acquired = await session.scalar(select(func.pg_try_advisory_xact_lock(lock_id)))
        if not acquired:
            raise _in_flight_error()

    async def _find(
        self, session: AsyncSession, request: IdempotentRequest
    ) -> StoredResponse | None:
        table = self.table
        live = and_(
            table.c.scope == request.scope,
            table.c.key == request.key,
            table.c.created_at > utcnow() - self.ttl,  # an expired record frees its key
        )
        row = (
            await session.execute(
                select(
                    table.c.fingerprint, table.c.status_code, table.c.headers, table.c.body
                ).where(live)
            )
        ).one_or_none()
        if row is None:
            return None
        if row.fingerprint != request.fingerprint:
            raise ProblemError(
                422,
                "This Idempotency-Key was already used for a different request; "
                "use a new key for a new request.",
                slug="idempotency-key-reused",
            )
        logger.info("idempotent replay of key %s", request.key)
        return StoredResponse(
            status_code=row.status_code,
            body=row.body,
            headers=dict(row.headers),
            replayed=True,
        )

    async def purge_expired(self, session: AsyncSession) -> int:
        """Delete records past the retention window; returns how many went."""
        async with session.begin():
            result = await session.execute(
                delete(self.table).where(self.table.c.created_at <= utcnow() - self.ttl)
            )
        return int(getattr(result, "rowcount", 0) or 0)


_OUTCOMES_BY_SLUG = {"idempotency-key-in-flight": "conflict", "idempotency-key-reused": "mismatch"}


def _in_flight_error() -> ProblemError:
    return ProblemError(
        409,
        "A request with this Idempotency-Key is still being processed; retry after it completes.",
        slug="idempotency-key-in-flight",
        headers={"Retry-After": "1"},
    )
