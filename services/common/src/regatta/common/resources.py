"""One versioned resource end to end: cached reads, idempotent creates, conditional writes.

A service describes its resource (model, repository, read schema) and gets the behaviour the
HTTP contract promises; its own ``service.py`` adds only its rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import ColumnElement, Row, Table
from sqlalchemy.ext.asyncio import AsyncSession

from regatta.common.cache import DELETED, CachedResponse, ResponseCache
from regatta.common.conditional import (
    CACHE_CONTROL,
    Precondition,
    make_etag,
    none_match,
    precondition_failed,
)
from regatta.common.db import Database
from regatta.common.errors import ProblemError
from regatta.common.events import record_event
from regatta.common.idempotency import (
    REPLAYED_HEADER,
    IdempotencyStore,
    IdempotentRequest,
    StoredResponse,
    fingerprint,
)
from regatta.common.pagination import PageRequest, next_cursor
from regatta.common.versioned import MAX_ID, M, VersionedRepository

R = TypeVar("R", bound=BaseModel)

JSON_MEDIA_TYPE = "application/json"


class Resource(Generic[M, R]):
    """The contract's behaviour for one resource type under ``/{name}``."""

    def __init__(
        self,
        *,
        name: str,
        singular: str,
        repository: VersionedRepository[M],
        read_schema: type[R],
        outbox: Table | None = None,
    ) -> None:
        self.name = name
        self.singular = singular
        # Events "<singular>.created|updated|deleted", carrying the public representation.
        self.outbox = outbox
        self.repository = repository
        self.read_schema = read_schema
        self._one = TypeAdapter(read_schema)
        self._many = TypeAdapter(list[read_schema])  # type: ignore[valid-type]
        self._cursor = TypeAdapter(str | None)

    def cache_key(self, row_id: int) -> str:
        """Where the rendered resource is cached."""
        return f"{self.name}:{row_id}"

    def location(self, row_id: int) -> str:
        """The resource's URL path."""
        return f"/{self.name}/{row_id}"

    def render(self, row: Row[Any]) -> CachedResponse:
        """The final JSON bytes and ETag of ``row``."""
        body = self._one.dump_json(self.read_schema.model_validate(row, from_attributes=True))
        return CachedResponse(version=row.version, etag=make_etag(row.version), body=body)

    def not_found(self, row_id: int) -> ProblemError:
        """The 404 for an id that does not exist."""
        return ProblemError(404, f"No {self.singular} has id {row_id}.", slug="not-found")

    def _check_id(self, row_id: int) -> None:
        if not 1 <= row_id <= MAX_ID:
            raise self.not_found(row_id)

    async def read(
        self, *, database: Database, cache: ResponseCache, row_id: int
    ) -> CachedResponse:
        """The rendered resource, from the cache when warm, else from the database (then cached)."""
        self._check_id(row_id)
        key = self.cache_key(row_id)
        cached = await cache.get(key)
        if cached is not None:
            return cached  # no session, no connection: a hit costs one cache round trip
        async with database.reader.connect() as connection:
            row = await self.repository.read(connection, row_id)
        if row is None:
            raise self.not_found(row_id)
        entry = self.render(row)
        await cache.put(key, entry)
        return entry

    async def list(
        self,
        *,
        database: Database,
        page: PageRequest,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> bytes:
        """One page of the list, rendered to JSON bytes."""
        async with database.reader.connect() as connection:
            rows = await self.repository.read_page(
                connection, after=page.after, limit=page.limit, where=where
            )
        shown = self._many.validate_python(rows[: page.limit], from_attributes=True)
        cursor = next_cursor([r.id for r in rows], page.limit)
        # {"data": [...], "next_cursor": ...}: each part rendered by pydantic-core in one call.
        return b'{"data":%s,"next_cursor":%s}' % (
            self._many.dump_json(shown),
            self._cursor.dump_json(cursor),
        )

    async def create(
        self,
        *,
        request: Request,
        session: AsyncSession,
        cache: ResponseCache,
        store: IdempotencyStore,
        idempotency_key: str | None,
        principal: str,
        values: Mapping[str, Any],
    ) -> StoredResponse:
        """Insert a row (once per idempotency key) and return the 201 to send or replay."""
        created: list[CachedResponse] = []

        async def write(write_session: AsyncSession) -> StoredResponse:
            row = await self.repository.insert(write_session, values)
            entry = self.render(row)
            await self._record(write_session, "created", entry)
            created.append(entry)
            return StoredResponse(
                status_code=201,
                body=entry.body,
                headers={"Location": self.location(row.id), "ETag": entry.etag},
            )

        keyed = (
            IdempotentRequest(
                key=idempotency_key,
                scope=principal,
                fingerprint=fingerprint(request.method, request.url.path, values),
            )
            if idempotency_key is not None
            else None
        )
        response = await store.run(session, keyed, write)
        if created:
            row_id = int(response.headers["Location"].rsplit("/", 1)[1])
            await cache.put(self.cache_key(row_id), created[0])
        return response

    async def update(
        self,
        *,
        session: AsyncSession,
        cache: ResponseCache,
        row_id: int,
        values: Mapping[str, Any],
        precondition: Precondition | None,
    ) -> CachedResponse:
        """Apply a partial update under the precondition; the cache holds the new version after."""
        self._check_id(row_id)
        async with session.begin():
            outcome = await self.repository.update(session, row_id, values, precondition)
            entry = self.render(outcome.row) if outcome.row is not None else None
            if entry is not None:
                await self._record(session, "updated", entry)
        if entry is None:
            raise self._write_refused(row_id, outcome.current_version)
        # Replaces any older entry atomically: invalidation and refill in one round trip.
        await cache.put(self.cache_key(row_id), entry)
        return entry

    async def delete(
        self,
        *,
        session: AsyncSession,
        cache: ResponseCache,
        row_id: int,
        precondition: Precondition | None,
    ) -> None:
        """Delete under the precondition; the cache forgets the row before this returns."""
        self._check_id(row_id)
        async with session.begin():
            outcome = await self.repository.delete(session, row_id, precondition)
            if outcome.row is not None:
                await self._record(session, "deleted", self.render(outcome.row))
        if outcome.row is None:
            raise self._write_refused(row_id, outcome.current_version)
        await cache.invalidate(self.cache_key(row_id), DELETED)

    async def _record(self, session: AsyncSession, action: str, entry: CachedResponse) -> None:
        if self.outbox is not None:
            await record_event(session, self.outbox, f"{self.singular}.{action}", entry.body)

    def _write_refused(self, row_id: int, current_version: int | None) -> ProblemError:
        if current_version is None:
            return self.not_found(row_id)
        return precondition_failed(current_version)


def entry_response(entry: CachedResponse, *, if_none_match: str | None = None) -> Response:
    """200 with the cached bytes, or 304 when the client already has this version."""
    headers = {"ETag": entry.etag, "Cache-Control": CACHE_CONTROL}
    if none_match(if_none_match, entry.etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, headers=headers, media_type=JSON_MEDIA_TYPE)


def stored_response(stored: StoredResponse) -> Response:
    """A write's response as first sent, or replayed with ``Idempotent-Replayed: true``."""
    headers = dict(stored.headers)
    if stored.replayed:
        headers[REPLAYED_HEADER] = "true"
    return Response(
        stored.body, status_code=stored.status_code, headers=headers, media_type=JSON_MEDIA_TYPE
    )


def json_response(body: bytes) -> Response:
    """A 200 with pre-rendered JSON bytes."""
    return Response(body, media_type=JSON_MEDIA_TYPE)


async def get_cache(request: Request) -> ResponseCache:
    """The application's response cache (dependency)."""
    cache: ResponseCache = request.app.state.cache
    return cache


CacheDep = Annotated[ResponseCache, Depends(get_cache)]


def idempotency_store(service: str) -> Callable[[Request], Awaitable[IdempotencyStore]]:
    """A dependency returning ``service``'s idempotency store."""

    async def get_store(request: Request) -> IdempotencyStore:
        store: IdempotencyStore = request.app.state.idempotency[service]
        return store

    return get_store
