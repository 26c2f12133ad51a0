"""A few autocommit connections lent to the hottest statements, without a pool checkout each.

SQLAlchemy's pool checkout and check-in (an AsyncConnection, a greenlet, the pool's events)
cost about an eighth of a database point read. :class:`ConnectionLender` keeps up to ``size``
connections checked out of that pool and lends them to one request at a time: taking an idle
one is a list pop, and when all are lent a request waits for the next one released (handed
over in order of waiting, within the pool's timeout) instead of checking out another. The
pool's other connections serve everything else (sessions, the outbox relay), so the hot paths
can never take them all; nor can they use more than their half when the database is slow.

What the pool does for its connections at checkout still happens to these:
- one idle for ``IDLE_SECONDS`` is not lent unchecked: it is discarded (the pool opens a new
  one), where the pool would have pinged it;
- one kept for ``KEEP_SECONDS`` goes back to the pool, for its recycling;
- when the pool invalidates its connections after a disconnect, every kept one goes back and
  every lent one goes back when released;
- one whose socket the server or a proxy closed is never lent; one on which a statement failed
  or was cancelled goes back, not to the next request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

IDLE_SECONDS = 10.0  # as db.IDLE_PING_SECONDS: the pool pings a connection idle this long
KEEP_SECONDS = 30.0


@dataclass(slots=True)
class Lent:
    """A connection on loan.

    When it left the pool, whether it was lent before, and the lender's generation then (a
    newer one means the pool has invalidated its connections since).
    """

    connection: AsyncConnection
    taken_at: float
    reused: bool
    generation: int


@dataclass(slots=True)
class _Idle:
    connection: AsyncConnection
    taken_at: float
    used_at: float


class ConnectionLender:
    """Up to ``size`` connections of ``engine``'s pool, lent one request at a time."""

    def __init__(self, engine: AsyncEngine, *, size: int, timeout: float) -> None:
        self._engine = engine
        self.size = size
        self._timeout = timeout
        self._idle: list[_Idle] = []
        self.open = 0  # connections out of the pool: idle here or lent
        self.generation = 0
        self._waiters: deque[asyncio.Future[Lent | None]] = deque()
        self._returning: set[asyncio.Task[None]] = set()
        self._closed = False
        event.listen(engine.sync_engine.pool, "invalidate", self._pool_invalidated)

    @property
    def idle(self) -> int:
        """Connections kept here, out of the pool, waiting for the next statement."""
        return len(self._idle)

    async def acquire(self) -> Lent:
        """An idle connection, a new one while fewer than ``size`` are out, else the next free."""
        deadline: float | None = None
        while True:
            kept = self._take_idle()
            if kept is not None:
                return kept
            if self.open < self.size or self._closed:
                self.open += 1
                try:
                    connection = await self._engine.connect()
                except BaseException:
                    self.open -= 1
                    self._hand_over(None)
                    raise
                return Lent(connection, time.monotonic(), reused=False, generation=self.generation)
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self._timeout
            handed = await self._wait(deadline)
            if handed is not None:
                return handed

    def _take_idle(self) -> Lent | None:
        # The most recently used kept connection that is still sound (the others go back).
        now = time.monotonic()
        while self._idle:
            idle = self._idle.pop()
            if _closed(idle.connection) or now - idle.used_at >= IDLE_SECONDS:
                self._return_later(idle.connection, discard=True)
            elif now - idle.taken_at >= KEEP_SECONDS:
                self._return_later(idle.connection, discard=False)
            else:
                return Lent(idle.connection, idle.taken_at, reused=True, generation=self.generation)
        return None

    async def release(self, lent: Lent, *, reuse: bool) -> None:
        """Take ``lent`` back: to the longest waiter, or kept, when ``reuse`` and it is sound."""
        connection = lent.connection
        if (
            reuse
            and lent.generation == self.generation
            and not (self._closed or connection.invalidated or connection.closed)
        ):
            again = Lent(connection, lent.taken_at, reused=True, generation=self.generation)
            if not self._hand_over(again):
                self._idle.append(_Idle(connection, lent.taken_at, time.monotonic()))
            return
        self.open -= 1
        try:
            await asyncio.shield(connection.close())
        finally:
            self._hand_over(None)  # a place is free: the longest waiter opens a connection

    async def close(self) -> None:
        """Return every idle connection to the pool; lent ones go back as they are released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for entry in idle:
            self.open -= 1
            await asyncio.shield(entry.connection.close())
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)
        while self._hand_over(None):
            pass

    async def _wait(self, deadline: float) -> Lent | None:
        # A connection handed over by release(), or None: a place came free, try again.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Lent | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, self._expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is None:
                    self._hand_over(None)  # the wake-up goes to the next waiter
                else:  # a connection in hand: passed on
                    await self.release(handed, reuse=True)
            raise
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _expire(self, waiter: asyncio.Future[Lent | None]) -> None:
        if not waiter.done():
            msg = f"no connection was free within {self._timeout:g} s"
            waiter.set_exception(sa_exc.TimeoutError(msg))

    def _hand_over(self, lent: Lent | None) -> bool:
        # To the longest waiter still waiting; False when there is none.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(lent)
                return True
        return False

    def _pool_invalidated(self, *_: object) -> None:
        # A connection was invalidated (a disconnect makes the pool invalidate all older
        # ones at their next checkout): the kept ones go back, the lent ones when released.
        self.generation += 1
        idle, self._idle = self._idle, []
        for entry in idle:
            self._return_later(entry.connection, discard=False)

    def _return_later(self, connection: AsyncConnection, *, discard: bool) -> None:
        # Back to the pool without keeping a request waiting for the check-in. Discarded
        # (invalidated) when it might be cut and the pool would not ping it: a check-in
        # counts as a use for the pool's idle ping.
        self.open -= 1
        close = connection.invalidate() if discard else connection.close()
        task = asyncio.get_running_loop().create_task(close)
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)


def _closed(connection: AsyncConnection) -> bool:
    """Whether ``connection`` is known to be gone: invalidated, closed, or its socket closed."""
    sync = connection.sync_connection
    if sync is None or sync.invalidated or sync.closed:
        return True
    driver = sync.connection.driver_connection
    return driver is None or bool(driver.is_closed())
