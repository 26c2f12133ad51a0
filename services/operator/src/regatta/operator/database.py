"""A database and a role of its own for each ApiService, in the platform's Postgres.

Every statement is idempotent (the timer replays it), and identifiers and the password are
quoted by Postgres itself (`format('%I', ...)`, `format('%L', ...)`), on top of names that are
already reduced to `[a-z0-9_]`: a resource name cannot smuggle SQL in.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

# Postgres truncates identifiers beyond 63 bytes; a hash keeps shortened names distinct.
_MAX_IDENTIFIER = 63
_HASH_LENGTH = 8
_UNSAFE = re.compile(r"[^a-z0-9_]+")


def database_name(namespace: str, name: str) -> str:
    """The database (and role) of an ApiService: readable, unique, at most 63 characters."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:_HASH_LENGTH]
    readable = _UNSAFE.sub("_", f"{namespace}_{name}".lower()).strip("_")
    room = _MAX_IDENTIFIER - len("api__") - _HASH_LENGTH
    return f"api_{readable[:room].rstrip('_')}_{digest}"


def new_password() -> str:
    """A password that needs no escaping inside a URL."""
    return secrets.token_urlsafe(24)


def _asyncpg_dsn(url: str) -> str:
    # The platform's URLs name SQLAlchemy's driver (`postgresql+asyncpg://`); asyncpg wants none.
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def service_database_url(admin_url: str, *, database: str, password: str, namespace: str) -> str:
    """The service's own URL: the admin URL's host and port, its role, password and database.

    A host without a domain is the platform's Service in its own namespace; it is qualified
    with that namespace so that pods in other namespaces reach it too.
    """
    parts = urlsplit(admin_url)
    host = parts.hostname or "localhost"
    if "." not in host and host != "localhost":
        host = f"{host}.{namespace}.svc"
    netloc = f"{quote(database, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, "/" + quote(database, safe=""), "", ""))


async def _format(connection: asyncpg.Connection, template: str, *arguments: str) -> str:
    placeholders = "".join(f", ${i}::text" for i in range(2, len(arguments) + 2))
    statement = await connection.fetchval(
        f"SELECT format($1::text{placeholders})", template, *arguments
    )
    return str(statement)


async def provision(admin_url: str, *, database: str, password: str) -> None:
    """Create (or bring up to date) the role and the database it owns."""
    connection = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        role_exists = await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", database
        )
        verb = "ALTER" if role_exists else "CREATE"
        try:
            await connection.execute(
                await _format(connection, f"{verb} ROLE %I LOGIN PASSWORD %L", database, password)
            )
        except asyncpg.DuplicateObjectError:  # created concurrently since the check
            await connection.execute(
                await _format(connection, "ALTER ROLE %I LOGIN PASSWORD %L", database, password)
            )
        database_exists = await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", database
        )
        if not database_exists:
            # Created concurrently since the check: just as good.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await connection.execute(
                    await _format(connection, "CREATE DATABASE %I OWNER %I", database, database)
                )
        # Nobody else connects to it; the owner has every right it needs.
        await connection.execute(
            await _format(connection, "REVOKE ALL ON DATABASE %I FROM PUBLIC", database)
        )
    finally:
        await connection.close()


async def drop(admin_url: str, *, database: str) -> None:
    """Drop the database (closing its connections) and its role; nothing happens if absent."""
    connection = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        await connection.execute(
            await _format(connection, "DROP DATABASE IF EXISTS %I WITH (FORCE)", database)
        )
        await connection.execute(await _format(connection, "DROP ROLE IF EXISTS %I", database))
    finally:
        await connection.close()
