"""Database failures told apart: "unavailable, retry shortly" (503) from a fault (500)."""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc


class DatabaseUnavailableError(sa_exc.OperationalError):
    """The database did not answer in time, or the connection to it broke: retry shortly."""


def unavailability(error: BaseException) -> tuple[bool, bool]:
    """Whether ``error`` means "unavailable" (503, not 500); whether it broke its connection."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, _UNAVAILABLE_CONNECTION_FINE):
            return True, False  # the server is there, its connections fine: no room, or time
        if isinstance(cause, _BROKEN) or (
            isinstance(cause, _MAYBE_BROKEN) and any(sign in str(cause) for sign in _BROKEN_SIGNS)
        ):
            return True, True
        cause = cause.__cause__
    return False, False


# statement_timeout, and the server short of resources (SQLSTATE 53: connection slots above all).
_UNAVAILABLE_CONNECTION_FINE = (
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.InsufficientResourcesError,
)
# Connection-level failures, and the server ending the session (the rest of SQLSTATE 57).
_BROKEN = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
    TimeoutError,
)
_MAYBE_BROKEN = (
    RuntimeError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
# uvloop's words for a closed socket; asyncpg's for a connection left mid-statement.
_BROKEN_SIGNS = ("handler is closed", "another operation", "connection is closed")

# A socket reset or closed under the connection; asyncpg's and uvloop's words for one.
_CUT = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
_MAYBE_CUT = (RuntimeError, asyncpg.exceptions.InterfaceError)
_CUT_SIGNS = ("connection is closed", "handler is closed", "connection was closed")


def cut(error: BaseException) -> bool:
    """Whether ``error`` says the connection had been closed (not that it timed out)."""
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, _CUT):
            return True
        if isinstance(cause, _MAYBE_CUT) and any(sign in str(cause) for sign in _CUT_SIGNS):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None) or cause.__context__
    return False
