"""What the data layer refuses for a client's reason; ``http/problems.py`` renders each one."""

from __future__ import annotations


class DataError(Exception):
    """A request the data layer refuses: the client's to change, not a fault of ours."""


class IdempotencyKeyReusedError(DataError):
    """The key was already used, within its retention window, for a different request."""

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used for a different request; "
            "use a new key for a new request."
        )


class IdempotencyKeyInFlightError(DataError):
    """Another request with the same key is still being written."""

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; "
            "retry after it completes."
        )
