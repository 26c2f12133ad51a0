"""One versioned resource end to end: cached reads, idempotent creates, conditional writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Header
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import ColumnElement, Row, Select, Table
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.data.columns import utcnow
from regatta.common.data.db import Database
from regatta.common.data.executor import Statements, statements_of
from regatta.common.data.idempotency import (
    IdempotencyStore,
    IdempotentRequest,
    StoredResponse,
    keyed_request,
)
from regatta.common.data.outbox import event_parameters, record_event
from regatta.common.data.repository import MAX_ID, M, VersionedRepository
from regatta.common.http.conditional import (
    CACHE_CONTROL,
    make_etag,
    none_match,
    parse_if_match,
    precondition_failed,
)
from regatta.common.http.context import RequestContext
from regatta.common.http.pagination import PageRequest, next_cursor
from regatta.common.http.problems import ProblemError
from regatta.common.redis.cache import DELETED, CachedResponse
from regatta.common.telemetry.tracing import current_trace_context

R = TypeVar("R", bound=BaseModel)

JSON_MEDIA_TYPE = "application/json"

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",  # printable ASCII without spaces
        description="Retry-safe creation: the same key and body replay the first response.",
    ),
]


@dataclass(kw_only=True, eq=False)
class Resource(Generic[M, R]):
    """The contract's behaviour for one resource type under ``/{name}``."""

    name: str
    singular: str
    repository: VersionedRepository[M]
    read_schema: type[R]
    outbox: Table | None = None  # events "<singular>.created|updated|deleted" go there

    def __post_init__(self) -> None:
        self._one = TypeAdapter(self.read_schema)
        self._many = TypeAdapter(list[self.read_schema])  # type: ignore[name-defined]
        self._cursor = TypeAdapter(str | None)

    def cache_key(self, row_id: int) -> str:
        """Where the rendered resource is cached."""
        return f"{self.name}:{row_id}"

    def render(self, row: Row[Any] | Mapping[str, Any]) -> CachedResponse:
        """The final JSON bytes and ETag of ``row`` (a row, or its columns by name)."""
        columns = row._mapping if isinstance(row, Row) else row  # noqa: SLF001 -- public
        body = self._one.dump_json(self.read_schema.model_validate(columns))
        version: int = columns["version"]
        return CachedResponse(version=version, etag=make_etag(version), body=body)

    def not_found(self, row_id: int) -> ProblemError:
        """The 404 for an id that does not exist."""
        return ProblemError(404, f"No {self.singular} has id {row_id}.", slug="not-found")

    def _check_id(self, row_id: int) -> None:
        if not 1 <= row_id <= MAX_ID:
            raise self.not_found(row_id)

    async def read(self, context: RequestContext, row_id: int) -> CachedResponse:
        """The rendered resource, read and cached (readcache.py answers the cache's hits)."""
        self._check_id(row_id)
        row = await self.repository.read(context.database, row_id)
        if row is None:
            raise self.not_found(row_id)
        entry = self.render(row)
        await context.cache.put(self.cache_key(row_id), entry)
        return entry

    async def list(
        self, *, database: Database, page: PageRequest, where: Sequence[ColumnElement[bool]] = ()
    ) -> bytes:
        """One page of the list, rendered to JSON bytes."""
        rows = await self.repository.read_page(
            database, after=page.after, limit=page.limit, where=where
        )
        data = self._many.dump_json(self._many.validate_python(rows[: page.limit]))
        cursor = self._cursor.dump_json(next_cursor([row["id"] for row in rows], page.limit))
        # {"data": [...], "next_cursor": ...}: each part rendered by pydantic-core in one call.
        return b'{"data":%s,"next_cursor":%s}' % (data, cursor)

    async def create(
        self, context: RequestContext, idempotency_key: str | None, values: Mapping[str, Any]
    ) -> StoredResponse:
        """Insert a row once per idempotency key: the 201 to send or replay (no cache entry yet)."""
        request, database, store = context.request, context.database, context.store
        keyed = keyed_request(
            method=request.method,
            path=request.url.path,
            key=idempotency_key,
            scope=context.writer,
            payload=values,
        )
        if database.dialect == "postgresql":
            return await self._create_in_one_statement(database, store, keyed, values)

        async def write(session: AsyncSession) -> StoredResponse:
            row = await self.repository.insert(session, values)
            entry = self.render(row)
            await self._record(statements_of(session), "created", entry)
            return self._created(row.id, entry)

        async with database.sessions() as session:
            return await store.run(session, keyed, write)

    def _created(self, row_id: int, entry: CachedResponse) -> StoredResponse:
        return StoredResponse(
            status_code=201,
            body=entry.body,
            headers={"Location": f"/{self.name}/{row_id}", "ETag": entry.etag},
        )

    async def _create_in_one_statement(
        self,
        database: Database,
        store: IdempotencyStore,
        keyed: IdempotentRequest | None,
        values: Mapping[str, Any],
    ) -> StoredResponse:
        # The id is drawn first so that row, event and key go in one autocommit statement.
        claim = store.claim if keyed is not None else None
        async with database.connect() as connection:

            async def prepare(row_id: int) -> tuple[StoredResponse, Select[Any], dict[str, Any]]:
                now = utcnow()
                row = {**values, "id": row_id, "version": 1, "created_at": now, "updated_at": now}
                entry = self.render(row)
                parameters = {f"row_{name}": value for name, value in row.items()}
                parameters |= event_parameters(
                    f"{self.singular}.created", entry.body, current_trace_context(), now
                )
                write = self.repository.create(tuple(row), claim, self.outbox)
                return self._created(row_id, entry), write, parameters

            if keyed is not None:
                return await store.run_claiming(connection, keyed, self.repository.next_id, prepare)
            # Safe to repeat: a sequence value drawn by a failed attempt is only a gap.
            drawn = await connection.rows(self.repository.draw)
            response, write, parameters = await prepare(drawn[0]["id"])
            await connection.rows(write, parameters)
            return response

    async def update(
        self, context: RequestContext, row_id: int, values: Mapping[str, Any]
    ) -> CachedResponse:
        """Apply a partial update under If-Match; the cache holds the new version after."""
        precondition = parse_if_match(context.request.headers.get("if-match"))
        self._check_id(row_id)
        async with context.database.transaction() as connection:
            outcome = await self.repository.update(connection, row_id, values, precondition)
            entry = self.render(outcome.row) if outcome.row is not None else None
            if entry is not None:
                await self._record(connection, "updated", entry)
        if entry is None:
            raise self._write_refused(row_id, outcome.current_version)
        # Replaces any older entry atomically: invalidation and refill in one round trip.
        await context.cache.put(self.cache_key(row_id), entry)
        return entry

    async def delete(self, context: RequestContext, row_id: int) -> None:
        """Delete under If-Match; the cache forgets the row before this returns."""
        precondition = parse_if_match(context.request.headers.get("if-match"))
        self._check_id(row_id)
        async with context.database.transaction() as connection:
            outcome = await self.repository.delete(connection, row_id, precondition)
            if outcome.row is not None:
                await self._record(connection, "deleted", self.render(outcome.row))
        if outcome.row is None:
            raise self._write_refused(row_id, outcome.current_version)
        await context.cache.invalidate(self.cache_key(row_id), DELETED)

    async def _record(self, connection: Statements, action: str, entry: CachedResponse) -> None:
        if self.outbox is not None:
            event = f"{self.singular}.{action}"
            await record_event(connection, self.outbox, event, entry.body, current_trace_context())

    def _write_refused(self, row_id: int, current_version: int | None) -> ProblemError:
        if current_version is None:
            return self.not_found(row_id)
        return precondition_failed(current_version)


def entry_response(
    entry: CachedResponse, *, if_none_match: str | None = None, private: bool = False
) -> Response:
    """200 with the cached bytes, or 304; ``private``: read with a key, not for shared caches."""
    cache_control = f"private, {CACHE_CONTROL}" if private else CACHE_CONTROL
    headers = {"ETag": entry.etag, "Cache-Control": cache_control}
    if none_match(if_none_match, entry.etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, headers=headers, media_type=JSON_MEDIA_TYPE)


def stored_response(stored: StoredResponse) -> Response:
    """A write's response as first sent, or replayed with ``Idempotent-Replayed: true``."""
    headers = dict(stored.headers)
    if stored.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        stored.body, status_code=stored.status_code, headers=headers, media_type=JSON_MEDIA_TYPE
    )
