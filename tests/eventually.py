"""The one way tests wait for something that happens asynchronously: poll it, with a limit."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

# An upper bound only, never an expectation: each wait returns as soon as its condition holds.
PATIENCE_SECONDS = 30.0


async def eventually(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    *,
    within: float = PATIENCE_SECONDS,
    interval: float = 0.05,
    what: Callable[[], str] = str,
) -> Any:
    """Poll ``check`` (plain or async) until it returns something true, and return that.

    Fails the test after ``within`` seconds, saying ``what()`` (for example the state seen).
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s {what()}".rstrip())
        await asyncio.sleep(interval)
