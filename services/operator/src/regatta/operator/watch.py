"""Reconciliations triggered by the children: drift is repaired when it happens.

The operator watches the Deployments, Services and HPAs it labels as its own; an event on one
of them (an edit, a deletion, the Deployment controller reporting progress) pokes the owning
ApiService, found by the child's controller reference. Pokes that arrive while a reconciliation
runs are folded into one more run, so a burst of events (the operator's own writes among them)
costs one or two reconciliations, never one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from regatta.operator.spec import GROUP, KIND

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of an ApiService


def owner_of(child: Mapping[str, Any]) -> Key | None:
    """The ApiService controlling this child, if any."""
    metadata = child.get("metadata") or {}
    for reference in metadata.get("ownerReferences") or []:
        api_version = str(reference.get("apiVersion", ""))
        if (
            reference.get("controller")
            and reference.get("kind") == KIND
            and api_version.split("/", 1)[0] == GROUP
        ):
            return str(metadata.get("namespace", "")), str(reference.get("name", ""))
    return None


class Coalescer:
    """Runs `run(key)` after each poke; pokes during a run make exactly one more run."""

    def __init__(self, run: Callable[[Key], Awaitable[None]]) -> None:
        self._run = run
        self._dirty: set[Key] = set()
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    def poke(self, key: Key) -> None:
        """Ask for a reconciliation of this ApiService soon."""
        self._dirty.add(key)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._drain(key))

    async def _drain(self, key: Key) -> None:
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                try:
                    await self._run(key)
                except Exception:
                    logger.exception("reconciling %s/%s after a change of a child failed", *key)
        finally:
            del self._tasks[key]

    async def close(self) -> None:
        """Cancel what is pending (on shutdown)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
